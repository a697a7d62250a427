"""The process groups of tensor and pipeline parallelism: set-up over a TCP store, and their collectives.

Invariants:
- Backend: gloo on CPU, NCCL on CUDA. The rendezvous is `tcp://HOST:PORT` (127.0.0.1 on one node).
- Rank layout (config.ParallelConfig): global rank = pp_rank * tp_size + tp_rank. The tensor-parallel group of
  a rank is its stage's tp_size ranks (the whole world when pp_size is 1); pipeline stage s sends its activations
  to the rank of the same tp_rank in stage s + 1 (`send_to_next` / `recv_from_prev`), and the last stage's
  first rank broadcasts each step's sampled token ids to every rank (`broadcast_from_last_stage`).
- `_STATE` is None in a single process: `get_tp_size()` and `get_pp_size()` are 1, ranks 0, and the collectives
  return their input unchanged without touching torch.distributed.
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
    init_method: str  # "tcp://HOST:PORT": 127.0.0.1 on one node, the driver's IP across nodes (Ray)
    backend: str  # "gloo" or "nccl"
    timeout_s: float = 60.0
    tensor_parallel_size: int = 0  # 0: the whole world (no pipeline stages)

    @property
    def tp_size(self) -> int:
        return self.tensor_parallel_size or self.world_size

    @property
    def pp_size(self) -> int:
        return self.world_size // self.tp_size


def make_distributed_init(parallel, device: str, host: str = "127.0.0.1", timeout_s: float = 60.0) -> DistributedInit:
    """How every rank of `parallel` (a ParallelConfig) joins: NCCL on CUDA, gloo on CPU, the store on `host`."""
    return DistributedInit(parallel.world_size, f"tcp://{host}:{free_port(host)}", "nccl" if device == "cuda" else "gloo",
                           timeout_s, parallel.tensor_parallel_size)


@dataclass
class _GroupState:
    rank: int  # global
    world_size: int
    backend: str
    group: Any  # this rank's tensor-parallel group
    tp_size: int
    pp_size: int

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp_size


_STATE: _GroupState | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that was free a moment ago (the rendezvous binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
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
    tp, pp = init.tp_size, init.pp_size
    group = dist.group.WORLD
    if pp > 1:  # every rank makes every stage's group, in the same order (torch.distributed requires it)
        for stage in range(pp):
            stage_group = dist.new_group(list(range(stage * tp, (stage + 1) * tp)), timeout=timeout)
            if stage == rank // tp:
                group = stage_group
    _STATE = _GroupState(rank, init.world_size, init.backend, group, tp, pp)
    logger.info("rank %d of %d (pipeline stage %d of %d, tensor-parallel rank %d of %d) joined the %s process group "
                "at %s", rank, init.world_size, _STATE.pp_rank, pp, _STATE.tp_rank, tp, init.backend, init.init_method)


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
    return 0 if _STATE is None else _STATE.tp_rank


def get_tp_size() -> int:
    return 1 if _STATE is None else _STATE.tp_size


def get_pp_rank() -> int:
    return 0 if _STATE is None else _STATE.pp_rank


def get_pp_size() -> int:
    return 1 if _STATE is None else _STATE.pp_size


def is_first_stage() -> bool:
    return get_pp_rank() == 0


def is_last_stage() -> bool:
    return get_pp_rank() == get_pp_size() - 1


def get_tp_group():
    return None if _STATE is None else _STATE.group


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over the tensor-parallel ranks (in place where possible; the identity with one rank)."""
    if _STATE is None or _STATE.tp_size == 1:
        return x
    import torch.distributed as dist

    if not x.is_contiguous():
        x = x.contiguous()
    dist.all_reduce(x, group=_STATE.group)
    return x


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Every tensor-parallel rank's `x` concatenated along `dim`, in rank order (the identity with one rank)."""
    if _STATE is None or _STATE.tp_size == 1:
        return x
    import torch.distributed as dist

    world = _STATE.tp_size
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


def send_to_next(tensors: dict[str, torch.Tensor]) -> None:
    """Send a pipeline stage's outputs (sorted by name) to the same tensor-parallel rank of the next stage."""
    import torch.distributed as dist

    dst = _STATE.rank + _STATE.tp_size
    for name in sorted(tensors):
        dist.send(tensors[name].contiguous(), dst)


def recv_from_prev(empty: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill `empty` (name -> a tensor of the expected shape, dtype and device) from the previous stage."""
    import torch.distributed as dist

    src = _STATE.rank - _STATE.tp_size
    for name in sorted(empty):
        dist.recv(empty[name], src)
    return empty


def broadcast_from_last_stage(x: torch.Tensor, async_op: bool = False):
    """The last stage's first rank's `x` on every rank (`x`: that rank's tensor, elsewhere one of its shape and
    dtype to receive into). With `async_op`, the collective's work handle (x is valid after its wait())."""
    if _STATE is None or _STATE.pp_size == 1:
        return None if async_op else x
    import torch.distributed as dist

    work = dist.broadcast(x, (_STATE.pp_size - 1) * _STATE.tp_size, async_op=async_op)
    return work if async_op else x


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
