"""The start-up compile pass (issue 24): run start-up's forwards once in compile-only mode
(kernels/background_compile.py), so their Triton variants compile on a thread pool, not one after
another inside the memory profile, the warm-up and CUDA-graph capture.

The worker runs two passes on CUDA (worker.py): `precompile_profile` before the memory profile (only the
model and no KV cache exist yet), and `precompile_startup` after the cache and the model runner exist,
before the warm-up, over the warm-up's batches and sampler calls (warmup.run_warm_up_forwards) and every
CUDA-graph shape's eager forward (CudaGraphRunner._forward for each of its shapes()).

Invariants:
- A pass runs exactly the code the real step will run (the same functions, the same buffers), so every
  variant it compiles is one start-up needs; nothing it computes is kept (kernel outputs are garbage).
- A forward that raises inside a pass is logged and skipped; the real run after it raises or works as
  it would have. The memory profile's log lines are silenced during its pass (its numbers are not real).
- PAGODA_COMPILE_THREADS sets the pool's size (default min(16, cpu count)); 0 turns the passes off.
  Each pass logs one INFO line: "compile pass (<what>): N kernel variants on T threads in S s".
- With compile processes started (`start_compile_processes`, which the worker calls before building the model;
  PAGODA_COMPILE_PROCESSES: a count, or `auto` for the thread count; default 0, none), each thread hands its
  compile to a process (kernels/compile_processes.py: the part of a compile that holds the GIL runs one
  thread at a time); the worker stops them after the last pass.
- Runs on CUDA only and never under Triton's interpreter (compile_only is then a no-op).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

THREADS_ENV = "PAGODA_COMPILE_THREADS"
MAX_DEFAULT_THREADS = 16

Forward = tuple[str, Callable[[], object]]  # (name for the log, the call)


def compile_threads() -> int:
    """The pool size: PAGODA_COMPILE_THREADS, else min(16, os.cpu_count()); 0 means no pass."""
    default = min(MAX_DEFAULT_THREADS, os.cpu_count() or 1)
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return default
    try:
        threads = int(raw)
    except ValueError:
        logger.warning("%s=%r is not an integer: using %d compile threads", THREADS_ENV, raw, default)
        return default
    return max(0, threads)


@torch.inference_mode()
def precompile(what: str, forwards: Sequence[Forward], threads: int | None = None):
    """Run `forwards` in compile-only mode on a pool of `threads` (default compile_threads()); wait for
    the compiles. Returns the CompileStats, or None when the pass is off (0 threads)."""
    from pagoda.kernels.background_compile import compile_only
    from pagoda.kernels.compile_processes import current_pool

    threads = compile_threads() if threads is None else threads
    if threads <= 0 or not forwards:
        return None
    started = time.perf_counter()
    processes = current_pool()
    with ThreadPoolExecutor(threads, thread_name_prefix="pagoda-compile") as pool:
        with compile_only(pool, processes) as stats:
            if not stats.active:
                return stats
            for name, forward in forwards:
                try:
                    forward()
                except Exception as exc:  # the real run after the pass meets it again
                    logger.warning("compile pass (%s): %s raised %r; its kernels compile when it really runs",
                                   what, name, exc)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the pass's activations
    where = f"{threads} threads" + (f" ({stats.in_processes} compiled in {processes.processes} processes)"
                                    if processes is not None else "")
    logger.info("compile pass (%s): %d kernel variants on %s in %.2f s (%d launches, %d failed, "
                "%.1f s of compiles)", what, stats.submitted, where, time.perf_counter() - started,
                stats.launches, stats.failed, stats.compile_seconds)
    return stats


@contextlib.contextmanager
def _quiet(logger_name: str):
    quieted = logging.getLogger(logger_name)
    level = quieted.level
    quieted.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quieted.setLevel(level)


def _profile_forward(worker) -> None:
    from pagoda.worker.gpu_memory import profile_num_blocks

    with _quiet("pagoda.worker.gpu_memory"):
        profile_num_blocks(worker)


def start_compile_processes(threads: int | None = None):
    """Start the compile processes (kernels/compile_processes.py) for the passes to come, so they import while
    the model loads: PAGODA_COMPILE_PROCESSES of them ("auto": the pass's threads; default none). None when off."""
    from pagoda.kernels.compile_processes import compile_processes, start_pool

    threads = compile_threads() if threads is None else threads
    return start_pool(compile_processes(threads)) if threads > 0 else None


def stop_compile_processes() -> None:
    from pagoda.kernels.compile_processes import stop_pool

    stop_pool()


def precompile_profile(worker, threads: int | None = None):
    """The memory profile's step (gpu_memory.profile_num_blocks: forward, logits, sampler), compile-only."""
    return precompile("memory profile", [("memory-profile step", functools.partial(_profile_forward, worker))],
                      threads)


def startup_forwards(runner, graph_max_size: int | None, graph_runners: Sequence = ()) -> list[Forward]:
    """The warm-up's forwards and sampler calls, then each CUDA-graph shape's eager forward."""
    from pagoda.worker.warmup import run_warm_up_forwards

    forwards: list[Forward] = [("warm-up", functools.partial(run_warm_up_forwards, runner, graph_max_size))]
    for graphs in graph_runners:
        forwards += [(f"graph forward {size}x{q}", functools.partial(graphs._forward, size, q))
                     for size, q in graphs.shapes()]
    return forwards


def precompile_startup(runner, graph_max_size: int | None, graph_runners: Sequence = (), threads: int | None = None):
    """Warm-up and CUDA-graph capture's kernels, compile-only (before either runs)."""
    return precompile("warm-up and CUDA graphs", startup_forwards(runner, graph_max_size, graph_runners), threads)
