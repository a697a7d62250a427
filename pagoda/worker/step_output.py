"""StepOutput: one step's sampled tokens on their way from the device to the host.

The runner launches a step and returns at once; the sampled ids (and logprobs) are copied to
pinned host memory without blocking, behind a CUDA event. The engine core resolves the output with
`get()` only after it has launched the next step, so the GPU never waits for Python.

Invariants:
- While a step is unresolved, each request that sampled in it has a placeholder (-1) as its last
  token in the runner's InputBatch; `get()` replaces the placeholder with the real id, unless the
  request left the batch meanwhile (finished, aborted or preempted: its row may belong to another
  request by then).
- `get()` is idempotent; the first call waits for the copy, later calls return the same object.
"""

from __future__ import annotations

import torch

from pagoda.core.sched_output import ModelRunnerOutput
from pagoda.worker.input_batch import InputBatch

PLACEHOLDER = -1


class StepOutput:
    def __init__(
        self,
        output: ModelRunnerOutput,
        batch: InputBatch | None = None,
        sampled: list[tuple[str, int, int, int | None]] | None = None,  # (req_id, row, position, logprobs wanted)
        sampled_ids: torch.Tensor | None = None,
        logprob_tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self._output = output
        self._batch = batch
        self._sampled = sampled or []
        self._event = None
        self._resolved = not self._sampled
        if self._resolved:
            return
        self._ids = sampled_ids.to("cpu", non_blocking=True)
        self._logprobs = None
        if logprob_tensors is not None:
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
        ids = self._ids.tolist()
        lists = None
        if self._logprobs is not None:
            lists = tuple(t.tolist() for t in self._logprobs)
        output, batch = self._output, self._batch
        for j, (req_id, row, position, wanted) in enumerate(self._sampled):
            token = ids[j]
            output.sampled_token_ids[req_id] = [token]
            if batch.row_of.get(req_id) == row and batch.token_ids[row, position] == PLACEHOLDER:
                batch.token_ids[row, position] = token
            if lists is not None and wanted is not None:
                top_ids, top_lps, ranks = lists
                output.logprobs[req_id] = [(top_ids[j][: wanted + 1], top_lps[j][: wanted + 1], ranks[j])]
        self._resolved = True
        return output
