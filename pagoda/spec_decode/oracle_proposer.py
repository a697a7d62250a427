"""A benchmark-only proposer that replays the tokens an earlier run without speculation produced.

Random weights make real proposers' acceptance near zero, so the machinery of speculative decoding
(verify steps of k + 1 tokens, bookkeeping, the rejection sampler) is measured with drafts that a
greedy target always accepts: `pagoda bench latency --spec-oracle`. Never used by the engine itself.

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

    def propose(self, token_ids: np.ndarray, max_num_tokens: int | None = None) -> list[int]:
        count = len(token_ids)
        limit = self.num_speculative_tokens if max_num_tokens is None else min(max_num_tokens, self.num_speculative_tokens)
        for sequence in self.sequences.get(tuple(token_ids[:self.key_len].tolist()), ()):
            if len(sequence) > count and np.array_equal(sequence[:count], token_ids):
                return sequence[count:count + limit].tolist()
        return []
