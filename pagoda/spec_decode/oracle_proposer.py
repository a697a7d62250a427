"""A benchmark-only proposer that replays the tokens an earlier run without speculation produced.

Random weights make real proposers' acceptance near zero, so the machinery of speculative decoding
(verify steps of k + 1 tokens, bookkeeping, the rejection sampler) is measured with drafts that a
greedy target always accepts: `pagoda bench latency --spec-oracle`. Never used by the engine unless a
benchmark sets `SpeculativeConfig.oracle` (then DeviceOracle drafts on the device, under async scheduling).

Invariants:
- `propose(token_ids)` returns the next (at most k) tokens of the recorded sequence that starts with
  `token_ids`; [] when no recorded sequence does (then the step decodes one token, as without drafts).
- Sequences are found by their first `key_len` tokens (at most the shortest recorded prompt), then
  checked whole, so a wrong draft is never proposed for a request whose tokens left the recorded run.
"""

from __future__ import annotations

import numpy as np

class OracleProposer:
    def __init__(self, num_speculative_tokens: int, sequences: list[list[int]] | None = None, key_len: int = 1) -> None:
        self.num_speculative_tokens = num_speculative_tokens
        self.key_len = key_len
        self.sequences: dict[tuple[int, ...], list[np.ndarray]] = {}
        for sequence in sequences or ():
            self.add(sequence)

    def add(self, sequence: list[int]) -> None:
        self.sequences.setdefault(tuple(sequence[:self.key_len]), []).append(np.asarray(sequence, dtype=np.int64))

    def recorded(self, token_ids: np.ndarray) -> np.ndarray:
        """The whole recorded sequence that starts with `token_ids` (empty when none does)."""
        for sequence in self.sequences.get(tuple(token_ids[:self.key_len].tolist()), ()):
            if len(sequence) >= len(token_ids) and np.array_equal(sequence[:len(token_ids)], token_ids):
                return sequence
        return np.zeros(0, dtype=np.int64)

    def propose(self, token_ids: np.ndarray, max_num_tokens: int | None = None) -> list[int]:
        count = len(token_ids)
        limit = self.num_speculative_tokens if max_num_tokens is None else min(max_num_tokens, self.num_speculative_tokens)
        for sequence in self.sequences.get(tuple(token_ids[:self.key_len].tolist()), ()):
            if len(sequence) > count and np.array_equal(sequence[:count], token_ids):
                return sequence[count:count + limit].tolist()
        return []


class DeviceOracle:
    """The oracle as a proposer on the device (async scheduling, as the draft model): row r drafts the recorded
    tokens after its newest token's position, from a device copy of its recorded sequence.

    A row's sequence is looked up (by its prompt, on the host) the first time the row proposes for a request;
    rows without one draft zeros (rejected like any wrong draft). `record(sequences)` replaces the recording."""

    def __init__(self, num_speculative_tokens: int, runner) -> None:
        import torch

        self.k = num_speculative_tokens
        self.runner = runner
        self.oracle = OracleProposer(num_speculative_tokens)
        batch = runner.batch
        self.width = batch.token_ids.shape[1]
        self.sequences = torch.zeros((batch.max_num_reqs, self.width), dtype=torch.int64, device=runner.device)
        self.lengths = np.zeros(batch.max_num_reqs, dtype=np.int64)
        self.loaded_epoch = np.full(batch.max_num_reqs, -1, dtype=np.int64)  # the row tenure each row holds

    def record(self, sequences: list[list[int]], key_len: int) -> None:
        self.oracle = OracleProposer(self.k, sequences, key_len)
        self.loaded_epoch[:] = -1

    def _load(self, rows: np.ndarray) -> None:
        from pagoda.worker.input_batch import to_device

        batch = self.runner.batch
        for row in rows[batch.epoch[rows] != self.loaded_epoch[rows]].tolist():
            prompt = batch.token_ids[row, : batch.num_prompt_tokens[row]]
            sequence = self.oracle.recorded(prompt)
            full = np.zeros(self.width, dtype=np.int64)
            full[: len(sequence)] = sequence[: self.width]
            self.sequences[row] = to_device(full, self.sequences.device)
            self.lengths[row] = len(sequence)
            self.loaded_epoch[row] = batch.epoch[row]

    def num_drafts(self, rows: np.ndarray) -> np.ndarray:
        batch = self.runner.batch
        return np.clip(self.lengths[rows] - batch.num_tokens[rows], 0, self.k)

    def propose(self, rows: np.ndarray, last, position, draft_ids) -> None:
        import torch

        self._load(rows)
        from pagoda.worker.input_batch import to_device

        rows_dev = to_device(rows, self.sequences.device)
        columns = (position[:, None] + 1 + torch.arange(self.k, device=position.device)).clamp(max=self.width - 1)
        draft_ids[rows_dev] = self.sequences[rows_dev[:, None], columns]
