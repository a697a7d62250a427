"""Process groups and the collectives tensor-parallel layers call (DESIGN §7: one small module).

Invariants:
- Nothing here runs unless the world has more than one process: `init_distributed` is called only by
  the multiprocessing and Ray executors (tp x pp > 1). With one process `get_tp_size()` is 1, `get_tp_rank()` 0 and
  every collective is the identity, so the single-process path creates no process group and pays
  nothing (model_executor/parallel_state.py reads the state here).
- Once initialized, the state (rank, world size, group) is fixed for the life of the process; a
  process serves one engine. `destroy_distributed` returns it to the single-process state.
"""

from pagoda.distributed.group import (
    DistributedInit,
    all_gather,
    all_reduce,
    broadcast_from_last_stage,
    destroy_distributed,
    free_port,
    get_pp_rank,
    get_pp_size,
    get_tp_group,
    get_tp_rank,
    get_tp_size,
    init_distributed,
    is_first_stage,
    is_last_stage,
    make_distributed_init,
    recv_from_prev,
    send_to_next,
)

__all__ = ["DistributedInit", "all_gather", "all_reduce", "broadcast_from_last_stage", "destroy_distributed",
           "free_port", "get_pp_rank", "get_pp_size", "get_tp_group", "get_tp_rank", "get_tp_size", "init_distributed",
           "is_first_stage", "is_last_stage", "make_distributed_init", "recv_from_prev", "send_to_next"]
