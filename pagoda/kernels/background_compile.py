"""Compile-only mode: Triton kernel launches compile on a thread pool instead of launching (issue 24).

Start-up compiles dozens of kernel variants one after another on the main thread (memory profile,
warm-up, CUDA-graph capture). Triton's compiler scales with threads, so `compile_only(executor)`
runs those start-up forwards once in a mode where every launch `kernel[grid](*args, **kwargs)` made by
the entering thread returns None at once and submits `JITFunction.run(*args, grid=grid, warmup=True,
**kwargs)` (compile and fill the kernel's cache, launch nothing) to `executor`; leaving the block
waits for those compiles, and the real forwards that follow find every variant compiled.

Invariants:
- Only launches from the thread that entered are diverted; other threads' launches and any
  warmup=True call run unchanged. One thread holds the mode at a time (others wait for it); entering
  again from the same thread raises RuntimeError.
- `JITFunction.run` and `JITFunction.__getitem__` (pinned to the Python proxy that calls `run`, so a
  native launch fast path cannot bypass the mode) are restored on exit, also when the block raises.
- A specialization is submitted once: the key is the kernel plus, per argument, what Triton can
  specialize on (a tensor's dtype and 16-byte alignment; an int's == 1, % 16 and width; a constexpr's
  value; launch options' values). The key may distinguish more than Triton does, never less.
- A pool job makes the caller's device current in its thread (a new thread's is device 0), and the
  kernel's source hash and per-device binder are computed on the entering thread before submission,
  so threads never race on Triton's lazily built per-kernel state.
- A failing compile is logged (kernel, error) and counted, never raised: the later real launch
  compiles again or raises as it would have. Pending jobs are cancelled when the block raises.
- Kernel outputs are never written in the mode, so torch ops after a launch see garbage: the code run
  inside must not use a kernel's output as an index or a host-side value (start-up's forwards do not).
- Without Triton, or under its interpreter (TRITON_INTERPRET=1: kernels are not JITFunctions), the
  mode is a no-op that says so (`CompileStats.active` False, `reason` set, one INFO line).
- With a CompileProcesses pool (kernels/compile_processes.py), a job captures its variant's specialization
  (Triton's jit_cache_hook, diverted for that thread only), has a worker process compile it into the disk
  cache, then runs `warmup=True` as above, which loads it; any failure on that path leaves the compile to
  the job's thread. The capture hook is installed for the whole block and removed after the last job.
- Pagoda uses no `triton.autotune` (it would benchmark garbage here); autotuned kernels launch through
  an Autotuner, whose own benchmark launches would be diverted: do not run them inside the mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_mode_lock = threading.Lock()  # one patching thread at a time
_owner: int | None = None  # thread id of the thread in compile-only mode


@dataclass
class CompileStats:
    """What one compile-only block did (filled in as it runs; final once the block has exited)."""

    active: bool = False
    reason: str = ""  # why the mode was off (active False)
    launches: int = 0  # launches diverted
    submitted: int = 0  # distinct specializations sent to the pool
    failed: int = 0
    in_processes: int = 0  # variants compiled by a CompileProcesses pool (kernels/compile_processes.py)
    compile_seconds: float = 0.0  # summed over pool jobs
    wall_seconds: float = 0.0  # entering to the last job done
    failures: list[str] = field(default_factory=list)  # "kernel: error", one per failed job


def _interpreter_on() -> bool:
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _current_device():
    from triton.runtime import driver

    return driver.active.get_current_device()


def _use_device(device) -> None:
    """Make `device` this thread's current device (Triton reads it through its driver: torch's)."""
    from triton.runtime import driver

    if driver.active.get_current_device() != device:
        driver.active.set_current_device(device)


def _prepare(fn, device) -> None:
    """Build the kernel's lazily computed state on this thread: its source hash and global-value map
    (Triton versions before 3.9 compute them unlocked) and its binder for `device` (a defaultdict)."""
    fn.cache_key
    fn.device_caches[device]


def _hashable(value):
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _arg_key(value, constexpr: bool):
    if isinstance(value, tuple):
        return ("tuple",) + tuple(_arg_key(v, constexpr) for v in value)
    if constexpr:
        return ("c", type(value).__name__, _hashable(value))
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return ("t", str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return ("b",)
    if isinstance(value, int):
        return ("i", value == 1, value % 16 == 0, -(1 << 31) <= value < (1 << 31), value >= (1 << 63))
    if isinstance(value, float):
        return ("f",)
    return ("o", type(value).__name__, _hashable(value))


def specialization_key(fn, args: tuple, kwargs: dict) -> tuple:
    """A key that two launches of `fn` share only if Triton would give them the same compiled variant."""
    params = fn.params
    by_name = {p.name: p for p in params}
    parts = [_arg_key(a, i >= len(params) or params[i].is_constexpr) for i, a in enumerate(args)]
    for name in sorted(kwargs):  # launch options (num_warps, ...) are not params: keyed by value
        param = by_name.get(name)
        parts.append((name, _arg_key(kwargs[name], param is None or param.is_constexpr)))
    return (id(fn), tuple(parts))


def _kernel_name(fn) -> str:
    return getattr(fn, "_fn_name", None) or getattr(fn, "__name__", repr(fn))


class _Mode:
    def __init__(self, executor: Executor, stats: CompileStats, original_run, processes=None) -> None:
        self.executor, self.stats, self.original_run = executor, stats, original_run
        self.processes = processes  # a CompileProcesses pool, or None: compiles run in the pool's threads
        self.seen: set[tuple] = set()
        self.futures: list[Future] = []
        self.stats_lock = threading.Lock()

    def divert(self, fn, args: tuple, kwargs: dict, grid) -> None:
        self.stats.launches += 1
        key = specialization_key(fn, args, kwargs)
        device = _current_device()
        key = (device,) + key
        if key in self.seen:
            return
        self.seen.add(key)
        try:
            _prepare(fn, device)
        except Exception as exc:  # a pool job will meet the same error and log it
            logger.debug("preparing %s on the caller's thread failed: %r", _kernel_name(fn), exc)
        self.stats.submitted += 1
        self.futures.append(self.executor.submit(self.compile, fn, device, args, kwargs, grid))

    def compile(self, fn, device, args: tuple, kwargs: dict, grid) -> None:
        started = time.perf_counter()
        try:
            _use_device(device)
            if self.processes is not None:
                self.compile_in_process(fn, device, args, kwargs, grid)
            self.original_run(fn, *args, grid=grid, warmup=True, **kwargs)  # after a process: a disk-cache load
        except Exception as exc:
            message = f"{_kernel_name(fn)}: {exc!r}"
            logger.warning("background compile failed (its first real launch compiles it again): %s", message)
            with self.stats_lock:
                self.stats.failed += 1
                self.stats.failures.append(message)
        finally:
            with self.stats_lock:
                self.stats.compile_seconds += time.perf_counter() - started

    def compile_in_process(self, fn, device, args: tuple, kwargs: dict, grid) -> None:
        """Compile the variant in a worker process into Triton's disk cache; on any failure leave it to this
        thread (the caller's run compiles it)."""
        from pagoda.kernels import compile_processes

        try:
            job = compile_processes.capture(self.original_run, fn, args, kwargs, grid, device)
            if job is None:
                return
            self.processes.compile(job)
        except Exception as exc:
            logger.info("compile process failed for %s (compiling it in this process instead): %r",
                        _kernel_name(fn), exc)
            return
        with self.stats_lock:
            self.stats.in_processes += 1

    def wait(self, cancel: bool) -> None:
        for future in self.futures:
            if cancel:
                future.cancel()
        for future in self.futures:
            if not future.cancelled():
                future.exception()  # compile() catches; this only waits
        self.futures = []


@contextlib.contextmanager
def compile_only(executor: Executor, processes=None):
    """Inside the block, this thread's Triton launches compile on `executor` instead of launching;
    exit waits for the compiles. With `processes` (a kernels/compile_processes.CompileProcesses), each of
    `executor`'s jobs has the compile itself done in one of its processes. Yields a CompileStats (final
    after exit)."""
    global _owner
    stats = CompileStats()
    started = time.perf_counter()
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        stats.reason = "Triton is not installed"
    else:
        if _interpreter_on():
            stats.reason = "Triton's interpreter is on (TRITON_INTERPRET=1)"
    if stats.reason:
        logger.info("compile-only mode off: %s", stats.reason)
        yield stats
        return
    if _owner == threading.get_ident():
        raise RuntimeError("compile_only is already active on this thread")
    with _mode_lock:
        own_getitem = JITFunction.__dict__.get("__getitem__")
        original_run = JITFunction.run
        mode = _Mode(executor, stats, original_run, processes)
        owner = threading.get_ident()

        def run(self, *args, grid, warmup, **kwargs):
            if warmup or threading.get_ident() != owner:
                return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)
            mode.divert(self, args, kwargs, grid)
            return None

        def getitem(self, grid):
            return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)

        stats.active = True
        _owner = owner
        JITFunction.run = run
        JITFunction.__getitem__ = getitem
        failed = True
        hooks = contextlib.ExitStack()
        try:
            if processes is not None:
                from pagoda.kernels.compile_processes import capture_hook_installed

                hooks.enter_context(capture_hook_installed())
            yield stats
            failed = False
        finally:
            JITFunction.run = original_run
            if own_getitem is None:
                del JITFunction.__getitem__
            else:
                JITFunction.__getitem__ = own_getitem
            _owner = None
            try:
                mode.wait(cancel=failed)
            finally:
                hooks.close()
            stats.wall_seconds = time.perf_counter() - started
            logger.debug("compile-only mode: %d launches, %d variants submitted, %d failed, %.2f s wall, "
                         "%.2f s of compiles", stats.launches, stats.submitted, stats.failed,
                         stats.wall_seconds, stats.compile_seconds)
