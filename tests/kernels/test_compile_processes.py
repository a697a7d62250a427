"""Compile processes (pagoda/kernels/compile_processes.py): a worker process's compile of a variant, rebuilt from
Triton's specialization JSON, is what this process's own compile then finds in the disk cache; failures come
back as errors; the capture hook diverts only the capturing thread. Ahead-of-time compiles for sm_90 need no
GPU (Triton ships ptxas). The kernel is tests/kernels/compile_probe_kernel.py's (a JITFunction under the
session's interpreter too)."""

import inspect
import os
import threading

import pytest

triton = pytest.importorskip("triton")

from pagoda.kernels import compile_processes as cp  # noqa: E402


def _variant(block: int = 256):
    """The test kernel's (signature, constexprs, attrs) for one fp32 variant, as JITFunction.run would hand them
    to its compile."""
    from compile_probe_kernel import scale_copy as fn

    signature = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "factor": "fp32", "BLOCK": "constexpr"}
    constexprs = {(4,): block}
    attrs = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}
    return fn, signature, constexprs, attrs


def _job(fn, signature, constexprs, attrs, target, options):
    from triton.runtime.jit import serialize_specialization_data

    extra = [target] if "target" in inspect.signature(serialize_specialization_data).parameters else []
    spec = serialize_specialization_data(fn._fn_name, signature, constexprs, attrs, options, "key", *extra)
    return cp.CompileJob(fn.fn.__module__, fn.fn.__qualname__, spec, target)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    here = os.path.dirname(os.path.abspath(__file__))  # the compile processes import compile_probe_kernel from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.syspath_prepend(here)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TRITON_ALWAYS_COMPILE", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    return tmp_path / "triton"


def test_worker_compile_is_what_the_parent_loads(cache_dir):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    options = make_backend(target).parse_options({"num_warps": 4})
    fn, signature, constexprs, attrs = _variant()
    pool = cp.CompileProcesses(1)
    try:
        assert pool.compile(_job(fn, signature, constexprs, attrs, target, options)) > 0
        written = set(os.listdir(cache_dir))
        assert written  # the worker wrote the kernel into this cache
        # this process's compile of the same variant is a cache hit (the parent's key is the worker's): under the
        # interpreter this process could not compile the kernel itself, so a miss would raise here
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
        assert set(os.listdir(cache_dir)) == written
        assert kernel.metadata.num_warps == 4
        # another variant is another entry (so the check above can fail)
        _, _, other, _ = _variant(block=512)
        pool.compile(_job(fn, signature, other, attrs, target, options))
        assert len(os.listdir(cache_dir)) > len(written)
    finally:
        pool.shutdown()


def test_a_failed_job_is_an_error_and_the_process_stays(cache_dir):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    options = make_backend(target).parse_options({"num_warps": 4})
    fn, signature, constexprs, attrs = _variant()
    good = _job(fn, signature, constexprs, attrs, target, options)
    pool = cp.CompileProcesses(1)
    try:
        with pytest.raises(RuntimeError, match="ModuleNotFoundError"):
            pool.compile(cp.CompileJob("pagoda.no_such_module", "kernel", good.specialization, target))
        with pytest.raises(RuntimeError, match="specialization of"):  # the JSON names another kernel
            pool.compile(cp.CompileJob("pagoda.kernels.sample", "_race_kernel", good.specialization, target))
        assert pool.compile(good) > 0  # the same process goes on
    finally:
        pool.shutdown()
    with pytest.raises(RuntimeError, match="no compile process"):
        pool.compile(good)


def test_capture_hook_diverts_only_the_capturing_thread(monkeypatch):
    from triton import knobs

    seen = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kw: seen.append(kw["name"]))
    previous = knobs.runtime.jit_cache_hook
    with cp.capture_hook_installed():
        assert knobs.runtime.jit_cache_hook is cp._capture_hook
        with cp.capture_hook_installed():  # nested: one installation
            pass
        assert knobs.runtime.jit_cache_hook is cp._capture_hook
        slot: list = []
        cp._local.slot = slot
        try:
            assert cp._capture_hook(name="captured") is True
            other = threading.Thread(target=lambda: cp._capture_hook(name="other thread"))
            other.start()
            other.join()
        finally:
            cp._local.slot = None
        assert slot == [{"name": "captured"}]
        assert seen == ["other thread"]  # the hook in place before ran for the other thread
    assert knobs.runtime.jit_cache_hook is previous


def test_process_count_from_the_environment(monkeypatch):
    monkeypatch.delenv(cp.PROCESSES_ENV, raising=False)
    assert cp.compile_processes(16) == 0  # off by default until timed
    monkeypatch.setenv(cp.PROCESSES_ENV, "auto")
    assert cp.compile_processes(16) == 16
    monkeypatch.setenv(cp.PROCESSES_ENV, "0")
    assert cp.compile_processes(16) == 0
    monkeypatch.setenv(cp.PROCESSES_ENV, "4")
    assert cp.compile_processes(16) == 4
    monkeypatch.setenv(cp.PROCESSES_ENV, "many")
    assert cp.compile_processes(16) == 0
