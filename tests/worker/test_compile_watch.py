"""The runtime-compile watch (worker/compile_watch.py): installed once into Triton's compile hook, it logs
each kernel variant once and chains any hook installed before it. Triton calls the hook only when it
really compiles (on a GPU; the CPU tests run kernels in its interpreter), so here the installed hook is
called as Triton calls it."""

from __future__ import annotations

import logging

import pytest

from pagoda.worker import compile_watch

knobs = pytest.importorskip("triton").knobs


@pytest.fixture
def fresh_watch(monkeypatch):
    monkeypatch.setattr(compile_watch, "_installed", False)
    monkeypatch.setattr(compile_watch, "_seen", set())
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)


def test_logs_each_variant_once_and_chains(fresh_watch, caplog):
    calls = []
    knobs.runtime.jit_cache_hook = lambda **kwargs: calls.append(kwargs["repr"])
    assert compile_watch.watch_runtime_compiles() and compile_watch.watch_runtime_compiles()
    hook = knobs.runtime.jit_cache_hook
    with caplog.at_level(logging.WARNING, logger="pagoda.worker.compile_watch"):
        for dtype in ("*bf16", "*bf16", "*fp32"):
            assert hook(key=None, repr="_race_kernel[num_warps=8](x: ()", fn=None,
                        compile={"signature": {"logits": dtype, "n": "i32"}}, is_manual_warmup=False,
                        already_compiled=False) is None
    assert compile_watch.runtime_compiles() == 2
    assert len([r for r in caplog.records if "compiled a kernel after start-up" in r.getMessage()]) == 2
    assert "*fp32" in caplog.records[-1].getMessage()
    assert len(calls) == 3  # the earlier hook still sees every compile


def test_a_variant_is_described_by_its_constexprs_and_specializations():
    """Triton's own repr is cut short ("(out_ptr: ()"), so the description names each constexpr and specialized
    argument from the hook's compile details, as Triton 3.x passes them (keys are argument index paths)."""
    class Fn:
        arg_names = ["out_ptr", "q_ptr", "num_reqs", "stride", "BLOCK_M", "CASCADE"]

    class Info:
        jit_function = Fn()

    kwargs = dict(repr="_paged_attn_kernel[num_warps=4, num_stages=2](out_ptr: ()", fn=Info(),
                  compile={"signature": {"out_ptr": "*bf16", "q_ptr": "*bf16", "num_reqs": "i32", "stride": "i32",
                                         "BLOCK_M": "constexpr", "CASCADE": "constexpr"},
                           "constants": {(4,): 16, (5,): True, (3,): 1},
                           "configs": [{(0,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}]})
    text = compile_watch.describe_variant(kwargs)
    assert text.startswith("_paged_attn_kernel[num_warps=4, num_stages=2] ")
    assert "BLOCK_M=16" in text and "CASCADE=True" in text and "stride=1" in text
    assert "num_reqs:divisibility=16" in text and "out_ptr:divisibility=16" in text
    assert "q_ptr: *bf16" in text and "BLOCK_M: constexpr" not in text
    assert compile_watch.describe_variant({}).startswith("?")



def test_a_start_up_phase_logs_at_info_apart_from_runtime_compiles(fresh_watch, caplog, monkeypatch):
    monkeypatch.setattr(compile_watch, "_phase_seen", set())
    monkeypatch.setattr(compile_watch, "_phase", None)
    assert compile_watch.watch_runtime_compiles(phase="warm-up and CUDA-graph capture")
    hook = knobs.runtime.jit_cache_hook
    common = dict(key=None, fn=None, compile={}, already_compiled=False)
    with caplog.at_level(logging.INFO, logger="pagoda.worker.compile_watch"):
        hook(repr="_paged_attn_kernel[num_warps=4](*bf16)", is_manual_warmup=False, **common)
        hook(repr="_prefix_attn_kernel[num_warps=4](*bf16)", is_manual_warmup=True, **common)  # the pass's own
        compile_watch.watch_runtime_compiles()  # start-up is over
        hook(repr="_race_kernel[num_warps=8](*fp32)", is_manual_warmup=False, **common)
    assert compile_watch.phase_compiles() == 1 and compile_watch.runtime_compiles() == 1
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and "during warm-up and CUDA-graph capture" in info[0].getMessage()
    assert "_paged_attn_kernel" in info[0].getMessage()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "_race_kernel" in warnings[0].getMessage()
