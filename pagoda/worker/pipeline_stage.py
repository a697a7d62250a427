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
- Several steps in flight (engine/core.py): a stage before the last does not wait for a step's sampled ids; it
  posts the broadcast's receive (`ReceivedTokens`, kept in `pending`) and goes on with the next step. Before a
  step touches a request whose ids are still on their way (it is scheduled, finished or preempted), `settle` waits for every pending receive up to the newest such one, in order; the
  runner then fails the requests the last stage marked -1, exactly where the last stage failed them. A request
  is never scheduled with its ids pending (the scheduler waits for the step's output), so settling waits for a
  step the last stage already sampled.
"""

from __future__ import annotations

import collections
from typing import Callable

import numpy as np
import torch

from pagoda.distributed import broadcast_from_last_stage, is_first_stage, is_last_stage, recv_from_prev, send_to_next
from pagoda.model_executor.models.pipeline import empty_intermediate
from pagoda.worker.input_batch import InputBatch
from pagoda.worker.step_output import SampledTokens

FAILED = -1  # the id a failed request gets in the shared sampled ids


class PipelineStage:
    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        self.model, self.dtype, self.device = model, dtype, device
        self.is_first, self.is_last = is_first_stage(), is_last_stage()
        self.pending: collections.deque[ReceivedTokens] = collections.deque()  # receives not waited for, in order

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

    def receive_sampled(self, batch: InputBatch, req_ids: list[str], rows: np.ndarray,
                        positions: np.ndarray) -> "ReceivedTokens":
        """Other stages: post the receive of the step's sampled ids (see the module docstring)."""
        ids = torch.empty(len(rows), dtype=torch.int64, device=self.device)
        received = ReceivedTokens(batch, req_ids, rows, positions, ids, broadcast_from_last_stage(ids, async_op=True))
        self.pending.append(received)
        return received

    def settle(self, touches: Callable[["ReceivedTokens"], bool]) -> list["ReceivedTokens"]:
        """Wait for every pending receive up to the newest one that `touches` the coming step (and for those that
        arrived meanwhile); returns them, oldest first."""
        last = max((i for i, received in enumerate(self.pending) if touches(received)), default=-1)
        done = []
        while self.pending and (len(done) <= last or self.pending[0].arrived()):
            done.append(self.pending.popleft())
            done[-1].ids()
        return done


class ReceivedTokens(SampledTokens):
    """A stage before the last: one step's sampled ids on their way from the last stage (an async broadcast)."""

    def __init__(self, batch: InputBatch, req_ids: list[str], rows: np.ndarray, positions: np.ndarray,
                 ids: torch.Tensor, work) -> None:
        self.req_ids, self.rows, self.positions = req_ids, rows, positions
        self.epochs = batch.epoch[rows].copy()
        self.device_ids, self._work, self._host = ids, work, None
        self.logprobs = self.wanted = None
        self.filled = False

    def arrived(self) -> bool:
        return self._work is None or self._work.is_completed()

    def is_ready(self) -> bool:
        return self._host is not None

    def ids(self) -> np.ndarray:
        if self._host is None:
            if self._work is not None:
                self._work.wait()
                self._work = None
            self._host = self.device_ids.cpu().numpy()
        return self._host

    def failed_rows(self) -> list[int]:
        """Indices (into req_ids) of the requests whose sampling failed on the last stage."""
        return np.flatnonzero(self.ids() == FAILED).tolist()
