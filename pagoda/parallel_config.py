"""ParallelConfig: how many ranks run one engine, how they are laid out, and which executor runs them.

Invariants:
- tensor_parallel_size and pipeline_parallel_size are integers >= 1; distributed_executor_backend is one of
  EXECUTOR_BACKENDS (vLLM's names; EXECUTOR_BACKENDS_NOT_YET are refused as "not supported yet"), and "uni"
  only with one rank. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    """Tensor and pipeline parallelism over one process per rank (DESIGN §7).

    Global rank = pp_rank * tensor_parallel_size + tp_rank: stage s holds ranks s*tp .. s*tp + tp - 1. The
    driver (the worker in the engine core's process, whose step outputs the engine reads) is the first rank
    of the LAST stage, which computes the logits and samples."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # vLLM's names; None: "mp" at world size > 1, else "uni"

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        backend = self.distributed_executor_backend
        if backend in EXECUTOR_BACKENDS_NOT_YET:
            raise ValueError(f"distributed_executor_backend={backend!r} (--distributed-executor-backend) is not "
                             "supported yet: the external-launcher executor comes in a later step "
                             f"(allowed: {', '.join(map(repr, EXECUTOR_BACKENDS))})")
        if backend not in EXECUTOR_BACKENDS:
            raise ValueError(f"distributed_executor_backend={backend!r} (--distributed-executor-backend) must be one "
                             f"of {', '.join(map(repr, EXECUTOR_BACKENDS))}")
        if backend == "uni" and self.world_size > 1:
            raise ValueError(f"distributed_executor_backend='uni' runs one worker, but tensor_parallel_size="
                             f"{self.tensor_parallel_size} x pipeline_parallel_size={self.pipeline_parallel_size} "
                             f"needs {self.world_size}; use 'mp' or 'ray' (or leave it unset)")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def executor_backend(self) -> str:
        """The executor that runs: "uni" (one worker in this process), "mp" (one process per extra rank on this
        node) or "ray" (one Ray actor per extra rank, on any node of the Ray cluster)."""
        if self.distributed_executor_backend == "ray":
            return "ray"
        return "mp" if self.world_size > 1 else "uni"

    @property
    def driver_rank(self) -> int:
        """The global rank of the engine core's own worker: the first rank of the last pipeline stage."""
        return (self.pipeline_parallel_size - 1) * self.tensor_parallel_size


EXECUTOR_BACKENDS = (None, "uni", "mp", "ray")
EXECUTOR_BACKENDS_NOT_YET = ("external_launcher",)
