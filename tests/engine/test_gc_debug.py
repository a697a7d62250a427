"""VLLM_GC_DEBUG: its values, and the pass logger's lines (generation, time, what was freed, walked types)."""

import gc
import logging

import pytest

from pagoda.engine import gc_debug


@pytest.fixture(autouse=True)
def detached():
    gc_debug.detach()
    yield
    gc_debug.detach()


def test_values():
    assert gc_debug.parse(None) is None and gc_debug.parse("") is None and gc_debug.parse("0") is None
    assert gc_debug.parse("1") == 0
    assert gc_debug.parse('{"top_objects": 3}') == 3
    for bad in ("2", "yes", '{"top_objects": 0}', '{"top_objects": "3"}', '{"top": 3}', "[3]", '{"top_objects": true}'):
        with pytest.raises(ValueError, match=r"VLLM_GC_DEBUG=.*allowed: unset or 0"):
            gc_debug.parse(bad)


def test_off_installs_nothing(monkeypatch):
    monkeypatch.delenv("VLLM_GC_DEBUG", raising=False)
    monkeypatch.delenv("PAGODA_GC_DEBUG", raising=False)
    before = list(gc.callbacks)
    assert not gc_debug.attach("test")
    assert gc.callbacks == before


def test_each_pass_is_logged_with_what_it_walked(monkeypatch, caplog):
    monkeypatch.setenv("VLLM_GC_DEBUG", '{"top_objects": 2}')
    assert gc_debug.attach("test process") and not gc_debug.attach("again")  # one logger per process
    assert sum(isinstance(cb, gc_debug.GCDebugLogger) for cb in gc.callbacks) == 1

    class Cycle:
        pass

    gc.freeze()  # the walked objects are then (mostly) the cycles below
    try:
        cycles = [Cycle() for _ in range(500)]
        for c in cycles:
            c.me = c
        del cycles, c
        with caplog.at_level(logging.INFO, logger="pagoda.engine.gc_debug"):
            gc.collect()
    finally:
        gc.unfreeze()
    lines = [r.getMessage() for r in caplog.records if "GC generation 2 pass" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert lines[0].startswith("test process: GC generation 2 pass took ") and " ms (collected " in lines[0]
    collected = int(lines[0].split("(collected ")[1].split(",")[0])
    assert collected >= 500  # the cycles (and their __dict__s)
    assert "walked" in lines[0] and "most common: " in lines[0] and "Cycle 500" in lines[0]
    gc_debug.detach()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pagoda.engine.gc_debug"):
        gc.collect()
    assert "GC generation" not in caplog.text


def test_pagoda_name_is_read_when_vllms_is_unset(monkeypatch, caplog):
    monkeypatch.delenv("VLLM_GC_DEBUG", raising=False)
    monkeypatch.setenv("PAGODA_GC_DEBUG", "1")
    assert gc_debug.attach("p")
    with caplog.at_level(logging.INFO, logger="pagoda.engine.gc_debug"):
        gc.collect()
    line = next(r.getMessage() for r in caplog.records if "GC generation 2" in r.getMessage())
    assert "walked" not in line  # timings only
