"""Full garbage-collector passes wait for idle engine time (pagoda/engine/gc_control.py)."""

import gc

import pytest

from pagoda.engine import gc_control


@pytest.fixture(autouse=True)
def enabled(monkeypatch):
    """The policy on, and the heap unfrozen for the test (restored after: an earlier test or plugin may
    have frozen it)."""
    monkeypatch.setattr(gc_control, "ENABLED", True)
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    yield
    if frozen:
        gc.freeze()


def test_no_full_pass_inside_and_defaults_restored_after():
    before = gc.get_threshold()
    full_passes = []

    def on_gc(phase, info):
        if phase == "start" and info["generation"] == 2:
            full_passes.append(info)

    gc.callbacks.append(on_gc)
    try:
        with gc_control.deferred_full_collections():
            assert gc.get_threshold()[2] >= 1_000_000 and gc.get_threshold()[:2] == before[:2]
            assert gc.get_freeze_count() > 0  # the heap from before is out of every pass
            for _ in range(200_000):  # plenty of allocations: young passes run, no full one
                a = []
                a.append(a)
            assert not full_passes
    finally:
        gc.callbacks.remove(on_gc)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_callers_freeze_is_kept_and_nesting_is_a_noop():
    gc.freeze()
    try:
        with gc_control.deferred_full_collections():
            with gc_control.deferred_full_collections():
                pass
            assert gc.get_threshold()[2] >= 1_000_000  # the inner exit did not restore early
        assert gc.get_freeze_count() > 0  # not unfrozen: the caller froze it
    finally:
        gc.unfreeze()


def test_disabled_keeps_cpython_defaults(monkeypatch):
    monkeypatch.setattr(gc_control, "ENABLED", False)
    before = gc.get_threshold()
    with gc_control.deferred_full_collections():
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert not gc_control.IdleCollector().collect_if_dirty()


def test_idle_collector_runs_one_pass_after_work():
    collector = gc_control.IdleCollector()
    assert not collector.collect_if_dirty()  # nothing ran since the last pass
    collector.worked()
    assert collector.collect_if_dirty()
    assert not collector.collect_if_dirty()


def test_freeze_startup_heap_collects_garbage_first_then_freezes_the_rest():
    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # garbage only a full pass reclaims
    del cycle
    live = [Node() for _ in range(100)]
    garbage_before = len(gc.get_objects())
    frozen, seconds = gc_control.freeze_startup_heap()
    try:
        # An object can leave the permanent generation (freed by refcount, e.g. on another thread) between the
        # freeze and this line, never join it: the count only goes down.
        assert seconds >= 0 and frozen >= gc.get_freeze_count() > 100
        assert frozen < garbage_before  # the cycle was collected, not frozen
        assert len(gc.get_objects()) < 10_000  # only what came after the freeze (other threads may allocate a few)
        assert all(isinstance(n, Node) for n in live)
    finally:
        gc.unfreeze()
