"""The Ray actor that runs one rank's Worker (executor/ray.py makes one per rank but the driver's).

Invariants:
- An actor is made empty (Ray picks its node and, on CUDA, its one GPU: CUDA_VISIBLE_DEVICES holds it alone, so
  its device is cuda:0), reports where it is (`node_info`), then `start` joins the process group as its rank
  and builds the Worker. One actor per rank; Ray runs one caller's calls to an actor in the order sent, so every
  rank runs the driver's calls in the driver's order.
- `run` is for start-up calls: their errors reach the driver (Ray's RayTaskError). `step` is fire-and-forget:
  it returns None, a failure is logged (the driver runs the same call and sees the same error), and a failure
  that leaves the device or the group unusable ends the actor's process, which the driver sees as a death.
- Only determine_num_blocks returns a value; nothing of a step travels back.
- On CUDA the actor of the driver's bundle holds that GPU for the driver and never starts (`node_info` only).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# errors after which a rank cannot go on (the same as the multiprocessing executor's workers)
_FATAL = ("CUDA error", "CUDA out of memory", "NCCL", "illegal memory access", "device-side assert")


class RayWorker:
    def __init__(self, log_level: int) -> None:
        logging.basicConfig(level=log_level, format="%(levelname)s %(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        self.worker = None
        self.rank: int | None = None

    def node_info(self) -> dict:
        import ray

        from pagoda.executor.ray_utils import host_ip

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": host_ip(ray), "cpus": cpus,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}

    def free_port(self, host: str) -> int:
        from pagoda.distributed import free_port

        return free_port(host)

    def start(self, config, rank: int, init, num_threads: int) -> None:
        import torch

        from pagoda.distributed import init_distributed
        from pagoda.worker.worker import Worker

        self.rank = rank
        if config.device.device == "cuda":
            torch.cuda.set_device(0)  # Ray's CUDA_VISIBLE_DEVICES: this actor's GPU alone
        else:
            torch.set_num_threads(num_threads)
        init_distributed(init, rank)
        self.worker = Worker(config, rank=rank)

    def run(self, message: tuple):
        method, args = message
        result = getattr(self.worker, method)(*args)
        return result if method == "determine_num_blocks" else None

    def step(self, message: tuple) -> None:
        method, args = message
        try:
            getattr(self.worker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the driver runs the same call and sees the same error
            logger.exception("rank %s: %s failed", self.rank, method)
            if isinstance(exc, MemoryError) or any(text in str(exc) for text in _FATAL):
                os._exit(1)

    def stop(self) -> None:
        from pagoda.distributed import destroy_distributed

        destroy_distributed()
