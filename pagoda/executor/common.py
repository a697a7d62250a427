"""What both multi-process executors (multiproc.py, ray.py) share: the engine seed every rank uses, the driver's
share of a call, dead workers and waiting for them, CPU threads per rank.

Invariants:
- `with_engine_seed` gives a config without a seed one (every rank must draw the same numbers for unseeded
  requests); `run_driver_share` turns an error of the driver's own call that a dead rank caused into
  WorkerDiedError (the executor's `dead` says which), any other error passes through.
- `cpu_threads` is a rank's share of its node's cores (OpenMP threads spin: oversubscribed ranks slow every
  collective); OMP_NUM_THREADS, when set, wins.
- `collective_timeout_s()` (PAGODA_DIST_TIMEOUT_S, default 120 s) bounds every gloo collective and the start-up
  rendezvous; START_TIMEOUT_S bounds a start-up call (model loading, cache set-up) on every rank.
- `looks_like_peer_error` only decides how long to wait for a worker's death before blaming the error on it;
  the death itself (a process sentinel, an actor's failed ref) is what makes WorkerDiedError.
- `abort_nccl` is best effort: NCCL kernels waiting for a dead peer would otherwise spin until its watchdog.
- `DriverThread` (pipeline parallelism: the engine keeps several steps in flight) runs the driver's share of the
  calls on one thread, in the order they were sent, and returns futures; the broadcast to the other ranks
  stays on the caller's thread, so every rank sees the calls in the same order.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import random

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "PAGODA_DIST_TIMEOUT_S"  # seconds a collective (and the start-up rendezvous) may wait; default 120
START_TIMEOUT_S = 600.0  # model loading and cache set-up on every rank
# How long an error that looks like a lost peer waits for a worker's death to show. A killed process's sockets close
# before its sentinel fires, and on a loaded 2-core machine the exit of a process holding a model took over 2 s (CI).
PEER_DEATH_WAIT_S = 5.0


def collective_timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, "120"))


def looks_like_peer_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("Connection", "connection", "closed", "Broken pipe", "Timed out", "timed out",
                                   "NCCL", "Gloo", "gloo", "peer"))


def abort_nccl() -> None:
    try:
        import torch.distributed as dist

        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            abort()
    except Exception:  # noqa: BLE001 - best effort; the collective timeout remains
        logger.debug("aborting the NCCL process group failed", exc_info=True)


def with_engine_seed(config):
    """`config`, with a random engine seed when the user gave none."""
    if config.model.seed is not None:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, seed=random.randrange(2**31)))


def run_driver_share(executor, fn, *args):
    """Run the driver's share of a call; an error caused by a dead rank becomes WorkerDiedError."""
    from pagoda.executor import WorkerDiedError

    try:
        return fn(*args)
    except Exception as exc:
        if executor._wait_for_death(timeout_s=PEER_DEATH_WAIT_S if looks_like_peer_error(exc) else 0.0):
            raise WorkerDiedError(f"{executor.dead} ({type(exc).__name__}: {exc})") from exc
        raise


def cpu_threads(ranks_on_node: int, cpus: int | None = None) -> int:
    """torch threads for one of `ranks_on_node` ranks sharing a CPU node (see the module docstring)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, ranks_on_node))


class DriverThread:
    """One thread that runs the driver rank's share of the steps, in order (see the module docstring)."""

    def __init__(self, executor, cuda: bool) -> None:
        self._executor = executor
        cuda_device = None
        if cuda:  # the device this (the engine's) thread uses; the current device is per thread
            import torch

            cuda_device = torch.cuda.current_device()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pagoda-driver",
                                                           initializer=_set_device, initargs=(cuda_device,))

    def submit(self, fn, *args) -> concurrent.futures.Future:
        return self._pool.submit(run_driver_share, self._executor, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _set_device(cuda_device: int | None) -> None:
    if cuda_device is not None:
        import torch

        torch.cuda.set_device(cuda_device)
