"""What both multi-process executors (multiproc.py, ray.py) share about dead workers and waiting for them.

Invariants:
- `collective_timeout_s()` (PAGODA_DIST_TIMEOUT_S, default 120 s) bounds every gloo collective and the start-up
  rendezvous; START_TIMEOUT_S bounds a start-up call (model loading, cache set-up) on every rank.
- `looks_like_peer_error` only decides how long to wait for a worker's death before blaming the error on it;
  the death itself (a process sentinel, an actor's failed ref) is what makes WorkerDiedError.
- `abort_nccl` is best effort: NCCL kernels waiting for a dead peer would otherwise spin until its watchdog.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "PAGODA_DIST_TIMEOUT_S"  # seconds a collective (and the start-up rendezvous) may wait; default 120
START_TIMEOUT_S = 600.0  # model loading and cache set-up on every rank


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
