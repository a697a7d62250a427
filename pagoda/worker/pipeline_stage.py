"""One pipeline stage's share of a step: activations in from the previous stage, out to the next, and the
sampled token ids the last stage shares with every rank.

Invariants:
- Every rank runs the same SchedulerOutputs in the same order (executor/multiproc.py), so every stage builds
  the same flat batch: a stage receives exactly the [num_tokens, width] tensors the previous one sends.
- Only the last stage computes logits, samples, pools and computes prompt logprobs; its StepOutputs are the
  ones the engine reads (its first rank is the driver, config.ParallelConfig.driver_rank).
- After sampling, the last stage broadcasts the step's sampled ids (one per sampling request, in the runner's
  order) to every rank, with -1 for a request whose own sampling rules failed there; every other stage
  takes them as its own sampling result, so that the runners' batches (token ids, placeholders, rows) stay
  the same on every rank, and fails the -1 requests as the last stage did.
- The exchange happens on the default stream with torch.distributed send/recv/broadcast; nothing here runs
  with one stage (the runner holds no PipelineStage then).
"""

from __future__ import annotations

from typing import Callable

import torch

from pagoda.distributed import broadcast_from_last_stage, is_first_stage, is_last_stage, recv_from_prev, send_to_next
from pagoda.model_executor.models.pipeline import empty_intermediate

FAILED = -1  # the id a failed request gets in the shared sampled ids


class PipelineStage:
    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        self.model, self.dtype, self.device = model, dtype, device
        self.is_first, self.is_last = is_first_stage(), is_last_stage()

    def forward(self, run: Callable[[dict | None], object], num_tokens: int) -> torch.Tensor | None:
        """`run(intermediate_tensors)` is the model forward; returns the hidden states on the last stage, None on
        the others (their outputs went to the next stage)."""
        received = None
        if not self.is_first:
            received = recv_from_prev(empty_intermediate(self.model, num_tokens, self.dtype, self.device))
        out = run(received)
        if self.is_last:
            return out
        send_to_next(out)
        return None

    def share_sampled(self, sampled_ids: torch.Tensor, failed_rows: list[int]) -> None:
        """Last stage: send this step's sampled ids to every rank (-1 at `failed_rows`)."""
        shared = sampled_ids
        if failed_rows:
            shared = sampled_ids.clone()
            shared[torch.tensor(failed_rows, device=shared.device)] = FAILED
        broadcast_from_last_stage(shared.to(torch.int64).contiguous())

    def receive_sampled(self, num_rows: int) -> tuple[torch.Tensor, list[int]]:
        """Other stages: (the step's sampled ids, the rows whose request failed on the last stage)."""
        ids = broadcast_from_last_stage(torch.empty(num_rows, dtype=torch.int64, device=self.device))
        failed = torch.nonzero(ids == FAILED).flatten().tolist()  # a host sync: the next step needs the ids anyway
        return ids, failed
