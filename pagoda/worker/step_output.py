"""One step's sampled tokens on their way from the device to the host, and the handle the engine reads.

The runner launches a step and returns at once; the sampled ids (and logprobs) are copied to pinned
host memory without blocking, behind a CUDA event (`SampledTokens`). The engine core resolves the
step's `StepOutput` handle only after it has launched the next step, so the GPU never waits for Python.

Invariants:
- Only the worker changes worker state. `StepOutput.get()` reads the host copy and returns the
  step's ModelRunnerOutput; it writes nothing the runner owns. The runner fills its own placeholders
  from the same host copy (`SampledTokens.fill`), when it next needs host tokens. So the handle can be
  replaced by a message from another process without changing the runner.
- While a step's tokens are not filled in, each request that sampled in it has a placeholder (-1) as
  its token in the runner's InputBatch; `fill` replaces it with the real id unless the request left
  the batch meanwhile (finished, aborted or preempted: its row may belong to another request by then,
  which the row's epoch tells).
- A step that samples one token per request uses SampledTokens; a speculative step, whose number of
  tokens per request is only known after verification, syncs in the runner and hands over a ready
  ModelRunnerOutput with ragged `sampled_token_ids` (1 + accepted drafts per request).
- `get()` is idempotent; the first call waits for the copy, later calls return the same object.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.core.sched_output import ModelRunnerOutput
from pagoda.worker.input_batch import InputBatch

PLACEHOLDER = -1


class SampledTokens:
    """One sampling step's ids (one per sampling request) and logprobs, copied to the host behind an event."""

    def __init__(self, batch: InputBatch, req_ids: list[str], rows: np.ndarray, positions: np.ndarray,
                 sampled_ids: torch.Tensor,
                 logprob_tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        self.req_ids = req_ids  # the requests that sampled, in the order of sampled_ids
        self.rows, self.positions = rows, positions  # their InputBatch rows and placeholder positions
        self.epochs = batch.epoch[rows].copy()  # which tenure of each row sampled
        self._ids = sampled_ids.to("cpu", non_blocking=True)
        self.logprobs = self.wanted = None
        if logprob_tensors is not None:
            self.wanted = batch.num_logprobs[rows].copy()  # logprobs asked per sampled request (-1: none)
            self.logprobs = tuple(t.to("cpu", non_blocking=True) for t in logprob_tensors)
        self._event = None
        if sampled_ids.is_cuda:
            self._event = torch.cuda.Event()
            self._event.record()
        self.filled = False

    def is_ready(self) -> bool:
        return self._event is None or self._event.query()

    def ids(self) -> np.ndarray:
        """The sampled ids on the host (waits for the copy)."""
        if self._event is not None:
            self._event.synchronize()
        return self._ids.numpy()

    def fill(self, batch: InputBatch) -> None:
        """Replace this step's placeholders in the runner's batch (called by the runner only)."""
        if self.filled:
            return
        ids, rows, positions = self.ids(), self.rows, self.positions
        still = (batch.epoch[rows] == self.epochs) & (batch.token_ids[rows, positions] == PLACEHOLDER)
        batch.token_ids[rows[still], positions[still]] = ids[still]
        self.filled = True


class StepOutput:
    def __init__(self, output: ModelRunnerOutput, sampled: SampledTokens | None = None) -> None:
        self._output = output
        self._sampled = sampled
        self._resolved = sampled is None

    @classmethod
    def ready(cls, output: ModelRunnerOutput) -> "StepOutput":
        return cls(output)

    def get(self) -> ModelRunnerOutput:
        if self._resolved:
            return self._output
        sampled, output = self._sampled, self._output
        ids = sampled.ids()
        output.sampled_token_ids.update(zip(sampled.req_ids, ([t] for t in ids.tolist())))
        if sampled.logprobs is not None:
            top_ids, top_lps, ranks = (t.tolist() for t in sampled.logprobs)
            for j in np.flatnonzero(sampled.wanted >= 0).tolist():
                k = int(sampled.wanted[j]) + 1
                output.logprobs[sampled.req_ids[j]] = [(top_ids[j][:k], top_lps[j][:k], ranks[j])]
        self._resolved = True
        return output
