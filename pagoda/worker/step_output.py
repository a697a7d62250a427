"""StepOutput: one step's sampled tokens on their way from the device to the host.

The runner launches a step and returns at once; the sampled ids (and logprobs) are copied to
pinned host memory without blocking, behind a CUDA event. The engine core resolves the output with
`get()` only after it has launched the next step, so the GPU never waits for Python.

Invariants:
- While a step is unresolved, each request that sampled in it has a placeholder (-1) as its last
  token in the runner's InputBatch; `get()` replaces the placeholder with the real id, unless the
  request left the batch meanwhile (finished, aborted or preempted: its row may belong to another
  request by then, which the row's epoch tells).
- `get()` is idempotent; the first call waits for the copy, later calls return the same object.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.core.sched_output import ModelRunnerOutput
from pagoda.worker.input_batch import InputBatch

PLACEHOLDER = -1


class StepOutput:
    def __init__(
        self,
        output: ModelRunnerOutput,
        batch: InputBatch | None = None,
        req_ids: list[str] | None = None,  # the requests that sampled, in the order of sampled_ids
        rows: np.ndarray | None = None,  # their InputBatch rows
        positions: np.ndarray | None = None,  # where their placeholders are
        sampled_ids: torch.Tensor | None = None,
        logprob_tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self._output = output
        self._batch = batch
        self._req_ids = req_ids or []
        self._event = None
        self._resolved = not self._req_ids
        if self._resolved:
            return
        self._rows, self._positions = rows, positions
        self._epochs = batch.epoch[rows].copy()  # which tenure of each row sampled
        self._ids = sampled_ids.to("cpu", non_blocking=True)
        self._logprobs = self._wanted = None
        if logprob_tensors is not None:
            self._wanted = batch.num_logprobs[rows]  # logprobs asked per sampled request (-1: none)
            self._logprobs = tuple(t.to("cpu", non_blocking=True) for t in logprob_tensors)
        if sampled_ids.is_cuda:
            self._event = torch.cuda.Event()
            self._event.record()

    @classmethod
    def ready(cls, output: ModelRunnerOutput) -> "StepOutput":
        return cls(output)

    def get(self) -> ModelRunnerOutput:
        if self._resolved:
            return self._output
        if self._event is not None:
            self._event.synchronize()
        ids = self._ids.numpy()
        output, batch, rows, positions = self._output, self._batch, self._rows, self._positions
        # Fill placeholders only where the row still belongs to the request that sampled.
        still = (batch.epoch[rows] == self._epochs) & (batch.token_ids[rows, positions] == PLACEHOLDER)
        batch.token_ids[rows[still], positions[still]] = ids[still]
        output.sampled_token_ids.update(zip(self._req_ids, ([t] for t in ids.tolist())))
        if self._logprobs is not None:
            top_ids, top_lps, ranks = (t.tolist() for t in self._logprobs)
            for j in np.flatnonzero(self._wanted >= 0).tolist():
                k = int(self._wanted[j]) + 1
                output.logprobs[self._req_ids[j]] = [(top_ids[j][:k], top_lps[j][:k], ranks[j])]
        self._resolved = True
        return output
