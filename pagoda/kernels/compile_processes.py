"""Triton compiles in worker processes, for the start-up compile pass (issue 24: cold start).

Compile-only mode (kernels/background_compile.py) compiles start-up's kernel variants on a thread pool. Part of
a Triton compile is Python (the kernel's AST walked into MLIR) and holds the GIL, so 16 threads may compile
slower than 16 cores can (session 17: 56 variants took 63.7 s of compiles in 9.6 s on 16 threads, ~2.3x each
one's time alone). A `CompileProcesses` pool moves the compile itself into separate processes:

1. the pool thread asks Triton for the variant's specialization without compiling it (`capture`: Triton's
   `jit_cache_hook` hands over the JSON that `JITFunction.preload` reads back; the hook returns True, which tells
   Triton to skip the compile);
2. a worker process rebuilds the variant's ASTSource from that JSON, exactly as `JITFunction.preload` does, and
   runs `triton.compile` for the parent's target, which writes the kernel into Triton's disk cache;
3. the pool thread runs `JITFunction.run(warmup=True)` as before, which finds the kernel in the disk cache under
   the same key (the key hashes the kernel's source, the specialization, the options, the target's backend and
   the cache-invalidating environment, all equal in both processes) and only loads it.

Invariants:
- Workers never initialise CUDA: the target is passed in (`GPUTarget`), so they take no device memory and the
  memory profile never sees them. They are fresh interpreters (`python -m pagoda.kernels.compile_processes`:
  no fork of a process that holds CUDA state, no re-import of the caller's main module, as multiprocessing's
  spawn would do) and inherit the environment (TRITON_CACHE_DIR, TRITON_HOME, the variables that invalidate
  Triton's cache), with this pagoda's folder first on PYTHONPATH.
- `capture` diverts the hook for the calling thread only and only while it runs; other threads' compiles (and
  the compile watch, worker/compile_watch.py) see the previous hook unchanged.
- A variant whose capture or worker compile fails is compiled by the pool thread as before (a result is never
  lost, only the time); a kernel whose module cannot be imported by name (a kernel defined inside a function)
  is one of those.
- PAGODA_COMPILE_PROCESSES sets the number of processes; 0 (the default until the GPU machine's cold start has
  timed both ways) keeps every compile in threads.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

PROCESSES_ENV = "PAGODA_COMPILE_PROCESSES"


@dataclass(frozen=True)
class CompileJob:
    """What a worker process needs to compile one variant: the kernel (importable by module and name), Triton's
    specialization JSON and the target."""

    module: str
    qualname: str
    specialization: str
    target: object  # triton.backends.compiler.GPUTarget


DEFAULT_PROCESSES = "0"  # PAGODA_COMPILE_PROCESSES's default: not yet timed against threads on the GPU machine


def compile_processes(threads: int) -> int:
    """PAGODA_COMPILE_PROCESSES (default DEFAULT_PROCESSES): a count, or "auto" for `threads`; 0 means none."""
    raw = (os.environ.get(PROCESSES_ENV, "").strip() or DEFAULT_PROCESSES).lower()
    if raw == "auto":
        return threads
    try:
        return max(0, int(raw))
    except ValueError:
        logger.warning("%s=%r is not an integer or 'auto': using no compile processes", PROCESSES_ENV, raw)
        return 0


# --- the parent's side: capturing a variant's specialization ---------------------------------------------------

_local = threading.local()  # .slot: a list the capture hook appends the hook's kwargs to
_hook_lock = threading.Lock()
_hook_users = 0
_previous_hook = None


def _capture_hook(**kwargs):
    slot = getattr(_local, "slot", None)
    if slot is not None:
        slot.append(kwargs)
        return True  # Triton skips the compile
    return _previous_hook(**kwargs) if _previous_hook is not None else None


@contextlib.contextmanager
def capture_hook_installed():
    """Keep `_capture_hook` as Triton's jit_cache_hook for the block (nested and concurrent blocks share one
    installation; the hook in place before the first is restored after the last)."""
    global _hook_users, _previous_hook
    from triton import knobs

    with _hook_lock:
        if _hook_users == 0:
            _previous_hook = knobs.runtime.jit_cache_hook
            knobs.runtime.jit_cache_hook = _capture_hook
        _hook_users += 1
    try:
        yield
    finally:
        with _hook_lock:
            _hook_users -= 1
            if _hook_users == 0:
                if knobs.runtime.jit_cache_hook is _capture_hook:
                    knobs.runtime.jit_cache_hook = _previous_hook
                _previous_hook = None


def capture(run, fn, args: tuple, kwargs: dict, grid, device) -> CompileJob | None:
    """The CompileJob of the variant `run(fn, *args, grid=grid, warmup=True, **kwargs)` would compile, without
    compiling it (inside capture_hook_installed()); None when the variant is compiled already (in memory) or
    its kernel cannot be imported by name."""
    slot: list[dict] = []
    _local.slot = slot
    try:
        run(fn, *args, grid=grid, warmup=True, **kwargs)
    finally:
        _local.slot = None
    if not slot:
        return None
    info = slot[-1]
    module, qualname = getattr(info["fn"], "module", None), getattr(info["fn"], "name", None)
    if not module or not qualname or "<locals>" in qualname:
        return None
    return CompileJob(module, qualname, info["compile"]["specialization_data"], _target(fn, device))


def _target(fn, device):
    """The GPUTarget `fn` compiles for on `device` (from its per-device state, which run() has just built)."""
    return fn.device_caches[device][2]


# --- the worker's side: compiling from the specialization -------------------------------------------------------

def _as_tuples(value):
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def _kernel(module: str, qualname: str):
    """The JITFunction whose Python function is `module`.`qualname` (the name may hold the function itself when
    the kernel was built as `name = JITFunction(fn)` under another name, or a wrapper such as an Autotuner)."""
    from triton.runtime.jit import JITFunction

    mod = importlib.import_module(module)
    obj = mod
    for part in qualname.split("."):
        obj = getattr(obj, part)
    while not isinstance(obj, JITFunction) and isinstance(getattr(obj, "fn", None), JITFunction):
        obj = obj.fn  # a wrapper of it (an Autotuner, a Heuristics)
    if not isinstance(obj, JITFunction):
        for value in vars(mod).values():
            if isinstance(value, JITFunction) and value.fn is obj:
                return value
        raise RuntimeError(f"{module}.{qualname} is not a Triton kernel")
    return obj


def _constant(value):
    import triton.language as tl

    if tl.dtype.is_dtype(value):
        return tl.dtype(value)
    if isinstance(value, dict) and "constexpr" in value:
        return tl.constexpr(_as_tuples(value["constexpr"]))
    if isinstance(value, dict) and "jit_function" in value:
        module, _, qualname = value["jit_function"].partition(":")
        return _kernel(module, qualname)
    return _as_tuples(value)


def source_and_options(job: CompileJob):
    """The ASTSource and parsed options that JITFunction.preload would build from `job` (no device needed)."""
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    fn = _kernel(job.module, job.qualname)
    data = json.loads(job.specialization)
    if data["name"] != fn._fn_name:
        raise RuntimeError(f"specialization of {data['name']} given for {fn._fn_name}")
    constexprs = {tuple(k): _constant(v) for k, v in zip(data["constant_keys"], data["constant_vals"])}
    attrs = {tuple(k): v for k, v in zip(data["attrs_keys"], data["attrs_vals"])}
    signature = {k: _as_tuples(v) for k, v in data["signature"].items()}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in data["options"].items()}
    options = make_backend(job.target).parse_options(options)
    make_source = getattr(fn, "ASTSource", ASTSource)  # the class JITFunction._do_compile uses
    return fn, make_source(fn, signature, constexprs, attrs), options


def compile_job(job: CompileJob) -> float:
    """Compile `job` into Triton's disk cache (in a worker process); returns the seconds it took."""
    import triton

    started = time.perf_counter()
    fn, src, options = source_and_options(job)
    getattr(fn, "compile", triton.compile)(src, target=job.target, options=options.__dict__)
    return time.perf_counter() - started


def _warm_worker() -> None:
    """A worker's first work, while the parent builds its model: import Triton's compiler, its NVIDIA backend and
    every module of pagoda.kernels (torch with them), so that the first job meets its kernel imported already."""
    import pkgutil

    import triton.compiler.compiler  # noqa: F401
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    import pagoda.kernels

    make_backend(GPUTarget("cuda", 90, 32))
    for info in pkgutil.iter_modules(pagoda.kernels.__path__):
        try:
            importlib.import_module(f"pagoda.kernels.{info.name}")
        except Exception:  # a module that needs what this machine lacks: its jobs fail and fall back to threads
            pass


def _send(stream, obj) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the compile process closed its pipe")
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def serve(requests, replies) -> None:
    """A worker process's loop: a CompileJob in, (True, seconds) or (False, "error") out, until EOF."""
    try:
        _warm_worker()
    except Exception:  # every job will fail alike and say why
        pass
    while True:
        try:
            job = _receive(requests)
        except EOFError:
            return
        try:
            reply = (True, compile_job(job))
        except Exception as exc:
            reply = (False, f"{type(exc).__name__}: {exc}")
        _send(replies, reply)


class CompileProcesses:
    """Compile processes (`python -m pagoda.kernels.compile_processes`, each talking pickles over its stdin and
    stdout), started early so they import while the model loads, stopped once start-up's passes are over.
    `compile(job)` blocks the calling thread until a free process has compiled the job."""

    def __init__(self, processes: int):
        import pagoda

        root = os.path.dirname(os.path.dirname(os.path.abspath(pagoda.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.pop("TRITON_INTERPRET", None)
        self.processes = processes
        self._idle: queue.Queue = queue.Queue()
        self._live = []
        for _ in range(processes):
            proc = subprocess.Popen([sys.executable, "-m", "pagoda.kernels.compile_processes"], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self._live.append(proc)
            self._idle.put(proc)

    def compile(self, job: CompileJob) -> float:
        """Compile `job` in a free process; returns its seconds, raises RuntimeError when it failed there."""
        while True:
            if not self._live:
                raise RuntimeError("no compile process is left")
            try:
                proc = self._idle.get(timeout=1.0)
                break
            except queue.Empty:
                continue
        try:
            _send(proc.stdin, job)
            ok, value = _receive(proc.stdout)
        except Exception:
            proc.kill()
            if proc in self._live:
                self._live.remove(proc)
            raise
        self._idle.put(proc)
        if not ok:
            raise RuntimeError(value)
        return value

    def shutdown(self) -> None:
        for proc in list(self._live):
            try:
                proc.stdin.close()  # EOF: the loop returns
            except OSError:
                pass
        for proc in list(self._live):
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._live = []


_pool: CompileProcesses | None = None


def start_pool(processes: int) -> CompileProcesses | None:
    """Start the process-wide pool (idempotent); None when `processes` is 0 or processes cannot start here."""
    global _pool
    if _pool is None and processes > 0:
        try:
            _pool = CompileProcesses(processes)
        except Exception as exc:  # no /dev/shm, a sandbox without process creation: threads compile
            logger.warning("compile processes could not start (%r): start-up compiles on threads", exc)
    return _pool


def current_pool() -> CompileProcesses | None:
    return _pool


def stop_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown()
        _pool = None


if __name__ == "__main__":
    _replies = os.fdopen(os.dup(1), "wb")  # the pipe to the parent; prints go to stderr from here on
    os.dup2(2, 1)
    serve(sys.stdin.buffer, _replies)
