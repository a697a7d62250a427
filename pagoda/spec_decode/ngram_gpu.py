"""The n-gram (prompt lookup) proposer on the device (vLLM's method "ngram_gpu"): the same drafts as
spec_decode/ngram_proposer.py, found with tensor ops over every proposing request at once, so that
speculative decoding with n-gram drafts keeps async scheduling on.

`ngram_lookup` is the search: for each row of token histories, the longest suffix of n tokens
(prompt_lookup_min <= n <= prompt_lookup_max) that occurs earlier, its earliest occurrence, and the k
tokens after it. `DeviceNgramProposer` keeps each request's tokens on the device (the prompt once, then
every step's accepted tokens, written where the device says they go) and drafts from them.

Invariants:
- Where the host proposer proposes m >= 1 tokens, row i's drafts[:m] are those tokens and count[i] = m;
  where it proposes none, count[i] = 0. Drafts past count are filler (the row's own tokens or 0): the
  scheduler schedules k device drafts per step whatever the lookup found, and filler is verified like any
  wrong draft (rejected unless the target agrees), so outputs never depend on it.
- The proposer never waits for the host: histories, lengths and drafts stay device tensors; the host only
  supplies bounds (a row's known-token count when it first proposes, the widest history).
- A row's history is exact at positions < its newest token's position + 1 whenever it proposes: loaded from
  the host tokens when a request's tenure of the row starts, then extended by `observe` at every step it
  samples in, before its proposal (rejected positions are overwritten by the tokens accepted later).
"""

from __future__ import annotations

import numpy as np
import torch


def ngram_lookup(history: torch.Tensor, lengths: torch.Tensor, k: int, min_n: int, max_n: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """history int64 [R, W] (row r's tokens are history[r, :lengths[r]]), lengths [R] >= 1 ->
    (drafts int64 [R, k], count int64 [R]: how many of the drafts the lookup found, 0 when none)."""
    rows, width = history.shape
    device = history.device
    ends = torch.arange(width, device=device)  # candidate end e of an earlier copy of the suffix
    last = lengths - 1
    suffix = history.gather(1, last[:, None])
    alive = (history == suffix) & (ends[None, :] <= (lengths - 2)[:, None])
    match = alive.to(torch.int64)  # match[r, e]: how long a suffix of row r ends (again) at e, up to max_n
    for i in range(1, max_n):
        earlier = history[:, (ends - i).clamp(min=0)]
        suffix = history.gather(1, (last - i).clamp(min=0)[:, None])
        alive = alive & (earlier == suffix) & (ends >= i)[None, :] & (last >= i)[:, None]
        match += alive.to(torch.int64)
    best = match.max(dim=1).values
    found = best >= min_n
    first = torch.argmax((match == best[:, None]).to(torch.int8), dim=1)  # the earliest end of a longest match
    columns = first[:, None] + 1 + torch.arange(k, device=device)[None, :]
    drafts = history.gather(1, columns.clamp(max=width - 1))
    count = torch.where(found, (lengths[:, None] > columns).sum(dim=1), torch.zeros_like(best))
    return drafts, count


class DeviceNgramProposer:
    """N-gram drafts for the runner's rows, on the device (see the module docstring)."""

    def __init__(self, num_speculative_tokens: int, prompt_lookup_min: int, prompt_lookup_max: int, runner) -> None:
        from pagoda.worker.input_batch import to_device

        self._to_device = to_device
        self.k, self.min_n, self.max_n = num_speculative_tokens, prompt_lookup_min, prompt_lookup_max
        self.runner = runner
        batch = runner.batch
        self.width = batch.token_ids.shape[1]
        # One spare column: writes of tokens that are not there (past a request's accepted ones) land in it.
        self.history = torch.zeros((batch.max_num_reqs, self.width + 1), dtype=torch.int64, device=runner.device)
        self.loaded_epoch = np.full(batch.max_num_reqs, -1, dtype=np.int64)

    def observe(self, rows: np.ndarray, known: np.ndarray, out: torch.Tensor, num_new: torch.Tensor,
                first_position: torch.Tensor) -> None:
        """Rows `rows` sampled: out[j, :num_new[j]] are their new tokens, the first at first_position[j] + 1;
        `known[j]`: how many of the row's tokens the host knows (where this step's placeholders start)."""
        batch, device = self.runner.batch, self.history.device
        for j in np.flatnonzero(batch.epoch[rows] != self.loaded_epoch[rows]).tolist():
            row, count = int(rows[j]), int(known[j])  # a new tenure: its tokens so far are all on the host
            self.history[row, :count] = self._to_device(batch.token_ids[row, :count], device)
            self.loaded_epoch[row] = batch.epoch[row]
        columns = first_position[:, None] + 1 + torch.arange(out.shape[1], device=device)[None, :]
        columns = torch.where(torch.arange(out.shape[1], device=device)[None, :] < num_new[:, None],
                              columns.clamp(max=self.width - 1), torch.full_like(columns, self.width))
        rows_dev = self._to_device(rows, device)
        self.history[rows_dev[:, None], columns] = out

    def propose(self, rows: np.ndarray, last: torch.Tensor, position: torch.Tensor, draft_ids: torch.Tensor) -> None:
        """k drafts for each of `rows` into draft_ids[rows]; the row's newest token is at `position`."""
        batch, device = self.runner.batch, self.history.device
        width = int(min(batch.num_tokens[rows].max(), self.width))  # a bound: host counts include the in-flight
        rows_dev = self._to_device(rows, device)
        history = self.history[rows_dev, :width]
        drafts, _ = ngram_lookup(history, (position + 1).clamp(max=width), self.k, self.min_n, self.max_n)
        draft_ids[rows_dev] = drafts
