"""The tensor-parallel process group: set-up over a TCP store on 127.0.0.1, and its collectives.

Invariants:
- Backend: gloo on CPU, NCCL on CUDA. The rendezvous is `tcp://127.0.0.1:<free port>` (one node; a
  later step adds multi-node addresses). World size = tensor_parallel_size (pipeline parallelism is a
  later step), and the tensor-parallel group is the whole world.
- `_STATE` is None in a single process: `get_tp_size()` is 1 and the collectives return their input
  unchanged without touching torch.distributed.
- Collectives are torch.distributed calls on the default stream and allocate their outputs with
  torch ops only, so with NCCL they are CUDA-graph capturable (the graph replays the NCCL kernels);
  gloo is CPU only, where there are no graphs.
- `timeout_s` bounds every gloo collective (and the rendezvous): a rank that died makes the others
  raise instead of waiting for ever. NCCL's own timeout only aborts through its watchdog, so the
  executor also watches its worker processes (executor/multiproc.py).
"""

from __future__ import annotations

import datetime
import logging
import pickle
import socket
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedInit:
    """How every rank joins the group (picklable: sent to the spawned workers)."""

    world_size: int
    init_method: str  # "tcp://127.0.0.1:PORT"
    backend: str  # "gloo" or "nccl"
    timeout_s: float = 60.0


@dataclass
class _GroupState:
    rank: int
    world_size: int
    backend: str
    group: Any


_STATE: _GroupState | None = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the rendezvous binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(init: DistributedInit, rank: int) -> None:
    """Join the process group as `rank` (blocks until every rank has joined, or the timeout)."""
    global _STATE
    import torch.distributed as dist

    if _STATE is not None:
        raise RuntimeError("the distributed state is already initialized in this process")
    timeout = datetime.timedelta(seconds=init.timeout_s)
    kwargs = {}
    if init.backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group(init.backend, init_method=init.init_method, world_size=init.world_size, rank=rank,
                            timeout=timeout, **kwargs)
    _STATE = _GroupState(rank, init.world_size, init.backend, dist.group.WORLD)
    logger.info("rank %d of %d joined the %s process group at %s", rank, init.world_size, init.backend,
                init.init_method)


def destroy_distributed() -> None:
    """Leave the process group (no-op when none was made)."""
    global _STATE
    if _STATE is None:
        return
    import torch.distributed as dist

    _STATE = None
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a peer may be gone already
        logger.debug("destroying the process group failed", exc_info=True)


def get_tp_rank() -> int:
    return 0 if _STATE is None else _STATE.rank


def get_tp_size() -> int:
    return 1 if _STATE is None else _STATE.world_size


def get_tp_group():
    return None if _STATE is None else _STATE.group


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over the ranks (in place where possible; the identity with one rank)."""
    if _STATE is None:
        return x
    import torch.distributed as dist

    if not x.is_contiguous():
        x = x.contiguous()
    dist.all_reduce(x, group=_STATE.group)
    return x


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Every rank's `x` concatenated along `dim`, in rank order (the identity with one rank)."""
    if _STATE is None:
        return x
    import torch.distributed as dist

    world = _STATE.world_size
    dim = dim % x.dim()
    x = x.contiguous()
    if _STATE.backend == "nccl":  # one kernel into one buffer: graph capturable
        out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, x, group=_STATE.group)
        pieces = out.view(world, *x.shape)
    else:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=_STATE.group)
        pieces = torch.stack(parts)
    # [world, ..., d, ...] -> [..., world * d, ...]
    return pieces.movedim(0, dim).reshape(*x.shape[:dim], world * x.shape[dim], *x.shape[dim + 1:])


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (pickled; for start-up values, not per-step data)."""
    if _STATE is None:
        return obj
    import torch.distributed as dist

    box = [obj if get_tp_rank() == src else None]
    dist.broadcast_object_list(box, src=src, group=_STATE.group)
    return box[0]


def dumps(obj: Any) -> bytes:
    """Pickle for messages to the workers; cloudpickle (when installed) for what pickle cannot take
    (a user's lambda logits processor)."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        try:
            import cloudpickle
        except ImportError:
            raise
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
