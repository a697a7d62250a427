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
  tokens per request is only known after verification, uses VerifiedTokens: 1 + accepted drafts per
  request (ragged `sampled_token_ids`). Until its copy is filled in, each of its requests holds 1 + k
  placeholders (as if every draft were accepted) and its `num_computed` counts them; `fill` writes the
  accepted tokens and takes the rejected positions back from `num_tokens` and `num_computed` — and from
  the placeholder positions of every later step not filled yet, whose placeholders move down with them.
  Without async scheduling the runner fills it at once (one sync per step).
- `get()` is idempotent; the first call waits for the copy, later calls return the same object.
  `sampled_tokens()` (the engine core's grammar thread) reads the same host copy and writes nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.core.sched_output import ModelRunnerOutput
from pagoda.worker.input_batch import InputBatch, to_device

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

    def arrived(self) -> bool:
        """Whether `fill` may run (always: the copy was issued; a pipeline stage's received ids may not be)."""
        return True

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

    def write_output(self, output: ModelRunnerOutput) -> None:
        """Put the step's ids and logprobs into `output` (waits for the copy)."""
        ids = self.ids()
        output.sampled_token_ids.update(zip(self.req_ids, ([t] for t in ids.tolist())))
        if self.logprobs is not None:
            top_ids, top_lps, ranks = (t.tolist() for t in self.logprobs)
            for j in np.flatnonzero(self.wanted >= 0).tolist():
                k = int(self.wanted[j]) + 1
                output.logprobs[self.req_ids[j]] = [(top_ids[j][:k], top_lps[j][:k], ranks[j])]


class VerifiedTokens:
    """One speculative step's tokens (1 + accepted drafts per sampling request) on their way to the host.

    `out` [R, 1 + max k] holds request j's tokens in out[j, :num_new[j]] (-1 after); `logprob_sets` are
    (top ids, top logprobs, sampled ranks) tensors, and request j's logprobs are rows lp_start[j].. of set
    lp_set[j] (-1: none asked), lp_width[j] wide, one row per token it yields."""

    def __init__(self, batch: InputBatch, req_ids: list[str], rows: np.ndarray, counts: np.ndarray,
                 out: torch.Tensor, num_new: torch.Tensor, logprob_sets: list[tuple[torch.Tensor, ...]],
                 lp_set: np.ndarray, lp_start: np.ndarray, lp_width: np.ndarray) -> None:
        self.req_ids, self.rows, self.counts = req_ids, rows, counts
        self.epochs = batch.epoch[rows].copy()
        self.positions = batch.num_tokens[rows].copy()  # where each request's placeholders start
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        batch.token_ids[np.repeat(rows, counts), np.repeat(self.positions, counts) + offsets] = PLACEHOLDER
        batch.num_tokens[rows] += counts
        self.out, self.num_new = out, num_new  # on the device: the next step reads them there
        self.rejected = to_device(counts, out.device) - num_new
        self._out = out.to("cpu", non_blocking=True)
        self._num_new = num_new.to("cpu", non_blocking=True)
        self._logprobs = [tuple(t.to("cpu", non_blocking=True) for t in s) for s in logprob_sets]
        self.lp_set, self.lp_start, self.lp_width = lp_set, lp_start, lp_width
        self._event = None
        if out.is_cuda:
            self._event = torch.cuda.Event()
            self._event.record()
        self.filled = False
        self._index_of_row = np.full(batch.max_num_reqs, -1, dtype=np.int64)  # InputBatch row -> index here
        self._index_of_row[rows] = np.arange(len(rows))

    def is_ready(self) -> bool:
        return self._event is None or self._event.query()

    def arrived(self) -> bool:
        return True

    def host(self) -> tuple[np.ndarray, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return self._out.numpy(), self._num_new.numpy()

    def sources(self, rows: np.ndarray, batch: InputBatch) -> np.ndarray:
        """For each of `rows`: its index in this step, or -1 when it did not sample here (or changed hands)."""
        index = self._index_of_row[rows]
        hit = index >= 0
        hit[hit] = batch.epoch[rows[hit]] == self.epochs[index[hit]]
        return np.where(hit, index, -1)

    def shift(self, row: np.ndarray, by: np.ndarray) -> None:
        """An earlier step rejected `by` positions of `row`: this step's placeholders moved down with them."""
        index = self._index_of_row[row]
        mine = index >= 0
        self.positions[index[mine]] -= by[mine]

    def fill(self, batch: InputBatch, later: list = ()) -> None:
        """Write the accepted tokens over the placeholders; take the rejected positions back (runner only)."""
        if self.filled:
            return
        out, num_new = self.host()
        still = batch.epoch[self.rows] == self.epochs
        rows, starts, num_new_still = self.rows[still], self.positions[still], num_new[still]
        keep = np.arange(out.shape[1]) < num_new_still[:, None]
        take = np.nonzero(keep)
        batch.token_ids[rows[take[0]], starts[take[0]] + take[1]] = out[still][keep]
        rejected = self.counts[still] - num_new_still
        # The positions past the accepted tokens hold placeholders only (this step's, later steps'), so
        # moving them down is only a matter of counts.
        batch.num_tokens[rows] -= rejected
        batch.num_computed[rows] -= rejected
        moved = rejected > 0
        for record in later:
            record.shift(rows[moved], rejected[moved])
        self.filled = True

    def write_output(self, output: ModelRunnerOutput) -> None:
        """Put each request's tokens (1 + accepted drafts) and their logprobs into `output` (waits for the copy)."""
        out, num_new = self.host()
        host_lp = [tuple(t.tolist() for t in s) for s in self._logprobs]
        for j, (req_id, tokens, n) in enumerate(zip(self.req_ids, out.tolist(), num_new.tolist())):
            output.sampled_token_ids[req_id] = tokens[:n]
            if self.lp_set[j] >= 0:
                ids, lps, ranks = host_lp[self.lp_set[j]]
                start, width = int(self.lp_start[j]), int(self.lp_width[j])
                output.logprobs[req_id] = [(ids[p][:width], lps[p][:width], ranks[p]) for p in range(start, start + n)]


class StepOutput:
    def __init__(self, output: ModelRunnerOutput, sampled: SampledTokens | VerifiedTokens | None = None) -> None:
        self._output = output
        self._sampled = sampled
        self._resolved = sampled is None

    @classmethod
    def ready(cls, output: ModelRunnerOutput) -> "StepOutput":
        return cls(output)

    def sampled_tokens(self) -> dict[str, int]:
        """Request id -> the one token it sampled, waiting for the copy only: safe on another thread, as it reads
        nothing `get` writes. Not for a speculative step (its tokens are ragged)."""
        if isinstance(self._sampled, SampledTokens):
            return dict(zip(self._sampled.req_ids, self._sampled.ids().tolist()))
        if self._sampled is None:  # resolved when made
            return {req_id: tokens[0] for req_id, tokens in self._output.sampled_token_ids.items() if len(tokens) == 1}
        raise RuntimeError("sampled_tokens() is for a step that sampled one token per request, without drafts")

    def get(self) -> ModelRunnerOutput:
        if self._resolved:
            return self._output
        self._sampled.write_output(self._output)
        self._resolved = True
        return self._output
