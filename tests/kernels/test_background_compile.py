"""compile_only (kernels/background_compile.py) on a real JITFunction, without a GPU.

The session runs with TRITON_INTERPRET=1 (tests/conftest.py), under which `@triton.jit` makes
InterpretedFunctions; the kernel here is a JITFunction built directly, and each test that wants the
mode on removes TRITON_INTERPRET (Triton's knob reads the environment on every access). There is no
driver on CPU, so `JITFunction.run` itself is replaced by a recorder before the mode saves it: its
warmup=True calls are the compiles the mode submits, its warmup=False calls are real launches.
"""

import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from pagoda.kernels import background_compile as bc  # noqa: E402


def _copy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


KERNEL = JITFunction(_copy)


class Recorder:
    def __init__(self, fail_compile: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail_compile = fail_compile
        self.lock = threading.Lock()

    def __call__(self, fn, *args, grid, warmup, **kwargs):
        with self.lock:
            self.calls.append(dict(fn=fn, args=args, kwargs=kwargs, warmup=warmup, grid=grid,
                                   thread=threading.get_ident()))
        if warmup and self.fail_compile:
            raise ValueError("ptxas exploded")
        return "compiled" if warmup else "launched"

    def compiles(self):
        return [c for c in self.calls if c["warmup"]]

    def launches(self):
        return [c for c in self.calls if not c["warmup"]]


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rec = Recorder()
    monkeypatch.setattr(JITFunction, "run", rec)
    monkeypatch.setattr(bc, "_current_device", lambda: 0)
    monkeypatch.setattr(bc, "_use_device", lambda device: None)
    return rec


def _launch(x, out, n=10, **kwargs):
    return KERNEL[(1,)](x, out, n, **kwargs)


def test_launches_submit_one_compile_per_specialization_and_never_launch(recorder):
    x, out = torch.zeros(64), torch.zeros(64)
    with ThreadPoolExecutor(2) as pool, bc.compile_only(pool) as stats:
        assert stats.active
        results = [
            _launch(x, out, BLOCK=16),
            _launch(x, out, BLOCK=16),  # the same specialization again
            _launch(x, out, n=7, BLOCK=16),  # 7 and 10: both neither 1 nor % 16, the same variant
            _launch(x, out, n=32, BLOCK=16),  # a multiple of 16: another variant
            _launch(x, out, n=1, BLOCK=16),  # == 1: another
            _launch(x, out, BLOCK=32),  # another constexpr
            _launch(x[1:], out, BLOCK=16),  # a pointer not 16-byte aligned
            _launch(x.half(), out, BLOCK=16),  # another dtype
            _launch(x, out, BLOCK=16, num_warps=8),  # another launch option
        ]
    assert results == [None] * 9
    assert recorder.launches() == []
    compiles = recorder.compiles()
    assert len(compiles) == 7 == stats.submitted
    assert stats.launches == 9 and stats.failed == 0
    assert all(c["fn"] is KERNEL and c["grid"] == (1,) for c in compiles)
    assert all(c["thread"] != threading.get_ident() for c in compiles)  # on the pool
    assert {c["kwargs"].get("BLOCK") for c in compiles} == {16, 32}


def test_exit_waits_for_the_compiles(recorder, monkeypatch):
    release = threading.Event()
    done = []

    def slow(fn, *args, grid, warmup, **kwargs):
        release.wait(5)
        done.append(warmup)

    monkeypatch.setattr(JITFunction, "run", slow)
    x = torch.zeros(16)
    with ThreadPoolExecutor(1) as pool:
        with bc.compile_only(pool):
            _launch(x, x, BLOCK=16)
            assert done == []
            release.set()
        assert done == [True]


def test_patch_is_restored_on_exit_and_after_an_exception(recorder):
    x = torch.zeros(16)
    with ThreadPoolExecutor(1) as pool:
        with bc.compile_only(pool):
            assert JITFunction.run is not recorder
        assert JITFunction.run is recorder and "__getitem__" not in JITFunction.__dict__
        with pytest.raises(KeyError):
            with bc.compile_only(pool):
                raise KeyError("boom")
        assert JITFunction.run is recorder and "__getitem__" not in JITFunction.__dict__
    assert _launch(x, x, BLOCK=16) == "launched"  # a normal launch again
    assert bc._owner is None


def test_a_failing_compile_is_logged_not_raised(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rec = Recorder(fail_compile=True)
    monkeypatch.setattr(JITFunction, "run", rec)
    monkeypatch.setattr(bc, "_current_device", lambda: 0)
    monkeypatch.setattr(bc, "_use_device", lambda device: None)
    x = torch.zeros(16)
    with caplog.at_level(logging.WARNING, logger=bc.__name__):
        with ThreadPoolExecutor(1) as pool, bc.compile_only(pool) as stats:
            _launch(x, x, BLOCK=16)
    assert stats.failed == 1 and len(rec.compiles()) == 1
    assert "_copy" in caplog.text and "ptxas exploded" in caplog.text


def test_pool_threads_use_the_callers_device(recorder, monkeypatch):
    used = []
    monkeypatch.setattr(bc, "_current_device", lambda: 3)
    monkeypatch.setattr(bc, "_use_device", lambda device: used.append((device, threading.get_ident())))
    x = torch.zeros(16)
    with ThreadPoolExecutor(1) as pool, bc.compile_only(pool):
        _launch(x, x, BLOCK=16)
    assert [device for device, _ in used] == [3]
    assert used[0][1] != threading.get_ident()


def test_the_kernels_hash_is_built_on_the_callers_thread(recorder, monkeypatch):
    prepared = []
    monkeypatch.setattr(bc, "_prepare", lambda fn, device: prepared.append((fn, device, threading.get_ident())))
    x = torch.zeros(16)
    with ThreadPoolExecutor(1) as pool, bc.compile_only(pool):
        _launch(x, x, BLOCK=16)
        _launch(x, x, BLOCK=16)
    assert prepared == [(KERNEL, 0, threading.get_ident())]


def test_other_threads_launch_normally_inside_the_mode(recorder):
    x = torch.zeros(16)
    results = []
    with ThreadPoolExecutor(1) as pool, bc.compile_only(pool):
        thread = threading.Thread(target=lambda: results.append(_launch(x, x, BLOCK=16)))
        thread.start()
        thread.join()
    assert results == ["launched"] and len(recorder.launches()) == 1 and recorder.compiles() == []


def test_nested_mode_on_one_thread_raises(recorder):
    with ThreadPoolExecutor(1) as pool, bc.compile_only(pool):
        with pytest.raises(RuntimeError, match="already active"):
            with bc.compile_only(pool):
                pass
    assert JITFunction.run is recorder


def test_interpreter_makes_it_a_no_op(recorder, monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(16)
    with caplog.at_level(logging.INFO, logger=bc.__name__):
        with ThreadPoolExecutor(1) as pool, bc.compile_only(pool) as stats:
            assert JITFunction.run is recorder
            assert _launch(x, x, BLOCK=16) == "launched"
    assert not stats.active and "interpreter" in stats.reason and "interpreter" in caplog.text


def test_without_triton_it_is_a_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.runtime", None)
    monkeypatch.setitem(sys.modules, "triton.runtime.jit", None)
    with ThreadPoolExecutor(1) as pool, bc.compile_only(pool) as stats:
        pass
    assert not stats.active and "not installed" in stats.reason


def test_specialization_key_distinguishes_what_triton_does():
    x = torch.zeros(64)
    key = lambda *args, **kw: bc.specialization_key(KERNEL, args, kw)  # noqa: E731
    assert key(x, x, 10, 16) == key(x, x, 11, 16)  # neither 1 nor % 16
    assert key(x, x, 16, 16) == key(x, x, 32, 16)
    assert len({key(x, x, 1, 16), key(x, x, 10, 16), key(x, x, 16, 16), key(x, x, 1 << 40, 16)}) == 4
    assert key(x, x, 10, 16) != key(x, x, 10, 32)  # BLOCK is a constexpr: by value
    assert key(x, x, 10, BLOCK=16) != key(x, x, 10, BLOCK=True)
    assert key(x, x, 10, 16) != key(x[1:], x, 10, 16)
    assert key(x, x, 10, 16) == key(x.clone(), torch.ones(64), 10, 16)


REAL_COMPILE = r"""
import json, os, sys, tempfile, threading
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()
import torch, triton, triton.language as tl
from concurrent.futures import ThreadPoolExecutor
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from pagoda.kernels.background_compile import compile_only

class Driver:  # torch's CUDA device rules: per thread, a new thread starts on device 0
    def __init__(self):
        self.local = threading.local()
    def get_current_device(self):
        return getattr(self.local, "device", 0)
    def set_current_device(self, device):
        self.local.device = device
    def get_current_stream(self, device):
        return 0
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

driver.set_active(Driver())
driver.active.set_current_device(1)

@triton.jit
def copy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

x = torch.zeros(64)
with ThreadPoolExecutor(2) as pool, compile_only(pool) as stats:
    results = [copy[(1,)](x, x, 10, BLOCK=b) for b in (16, 32, 16)]
print(json.dumps(dict(results=results, submitted=stats.submitted, failed=stats.failed,
                      cached={str(d): len(c[0]) for d, c in copy.device_caches.items()})))
"""


def test_real_triton_compiles_on_the_pool_for_the_callers_device(tmp_path):
    """Triton's own JITFunction.run(warmup=True) compiles for sm_90 without a GPU (it ships ptxas):
    the variants land in the caller's device's kernel cache, compiled on pool threads."""
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "real_compile.py"  # @triton.jit needs its source in a file
    script.write_text(REAL_COMPILE)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == dict(results=[None, None, None], submitted=2, failed=0, cached={"1": 2})


class FakeProcesses:
    """Stands in for compile_processes.CompileProcesses: records the jobs, optionally failing them."""

    processes = 2

    def __init__(self, fail: bool = False) -> None:
        self.jobs: list = []
        self.fail = fail
        self.lock = threading.Lock()

    def compile(self, job):
        with self.lock:
            self.jobs.append(job)
        if self.fail:
            raise RuntimeError("the worker process died")
        return 0.1


@pytest.fixture
def hooked_recorder(recorder, monkeypatch):
    """The recorder, plus what Triton's run does on a cache miss: call knobs.runtime.jit_cache_hook with the
    variant's specialization and skip the compile when it returns True."""
    from triton import knobs

    from pagoda.kernels import compile_processes as cp

    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(cp, "_target", lambda fn, device: "sm_90")
    plain = Recorder.__call__

    def run(self, fn, *args, grid, warmup, **kwargs):
        hook = knobs.runtime.jit_cache_hook
        info = type("Info", (), {"module": fn.fn.__module__, "name": fn.fn.__qualname__})()
        spec = f"{fn.fn.__qualname__}:{kwargs.get('BLOCK')}"
        if warmup and hook is not None and hook(fn=info, compile={"specialization_data": spec}, is_manual_warmup=True):
            with self.lock:
                self.calls.append(dict(fn=fn, args=args, kwargs=kwargs, warmup="captured", grid=grid,
                                       thread=threading.get_ident()))
            return None
        return plain(self, fn, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(Recorder, "__call__", run)
    return recorder


def test_with_processes_each_variant_is_captured_compiled_there_then_loaded(hooked_recorder):
    from triton import knobs

    x, out = torch.zeros(64), torch.zeros(64)
    processes = FakeProcesses()
    with ThreadPoolExecutor(2) as pool, bc.compile_only(pool, processes) as stats:
        _launch(x, out, BLOCK=16)
        _launch(x, out, BLOCK=32)
        _launch(x, out, BLOCK=32)
    assert stats.submitted == 2 and stats.in_processes == 2 and stats.failed == 0
    assert sorted(j.specialization for j in processes.jobs) == ["_copy:16", "_copy:32"]
    assert {(j.module, j.qualname, j.target) for j in processes.jobs} == {(_copy.__module__, "_copy", "sm_90")}
    kinds = [c["warmup"] for c in hooked_recorder.calls]
    assert kinds.count("captured") == 2 and kinds.count(True) == 2  # each: captured, then loaded by warmup=True
    assert hooked_recorder.launches() == []
    assert knobs.runtime.jit_cache_hook is None  # the capture hook is gone after the block


def test_a_variant_the_processes_fail_is_compiled_by_the_thread(hooked_recorder):
    x, out = torch.zeros(64), torch.zeros(64)
    processes = FakeProcesses(fail=True)
    with ThreadPoolExecutor(1) as pool, bc.compile_only(pool, processes) as stats:
        _launch(x, out, BLOCK=16)
    assert len(processes.jobs) == 1 and stats.in_processes == 0 and stats.failed == 0
    kinds = [c["warmup"] for c in hooked_recorder.calls]
    assert kinds == ["captured", True]  # the thread's own warmup=True compile after the failed job
