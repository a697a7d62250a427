"""The n-gram (prompt lookup) draft proposer, with the semantics of vLLM V1's `NgramProposer`.

For one request whose known tokens (prompt + output so far) are t[0], ..., t[L-1]:
1. find the largest n in [prompt_lookup_min, prompt_lookup_max] such that the suffix t[L-n:] occurs
   earlier in the sequence: ending at some position e <= L-2 (it may overlap the suffix itself);
2. among the occurrences of that longest suffix take the earliest (the smallest e), as vLLM does;
3. propose the tokens that followed it, t[e+1 : e+1+k] with k = num_speculative_tokens, capped by
   `max_num_tokens` when given; fewer when the sequence ends first.

vLLM finds the same match with a KMP scan of the reversed sequence; here the candidates are the earlier
copies of the last token, found with one vectorised compare, and each round of numpy compares extends
the match by one token, keeping the candidates that still match, until prompt_lookup_max or until none
would survive.

Invariants:
- `propose` depends only on its arguments and the three bounds fixed at construction: it keeps no
  state between calls, so one proposer serves every request of a batch.
- Its result is [] (fewer than prompt_lookup_min + 1 tokens, no earlier occurrence of the last
  prompt_lookup_min tokens, or a cap of 0), or 1 to min(num_speculative_tokens, max_num_tokens)
  tokens copied from `token_ids` (as Python ints).
- A call costs one O(L) vectorised compare plus at most prompt_lookup_max - 1 compares over the
  surviving candidates; there is no Python-level loop over the sequence.
"""

from __future__ import annotations

import numpy as np


class NgramProposer:
    """Drafts for one request at a time from its own earlier tokens (host only, no model)."""

    def __init__(self, num_speculative_tokens: int, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        if num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {num_speculative_tokens}")
        if prompt_lookup_min < 1:
            raise ValueError(f"prompt_lookup_min must be >= 1, got {prompt_lookup_min}")
        if prompt_lookup_max < prompt_lookup_min:
            raise ValueError(f"prompt_lookup_max ({prompt_lookup_max}) must be >= prompt_lookup_min "
                             f"({prompt_lookup_min})")
        self.num_speculative_tokens = int(num_speculative_tokens)
        self.prompt_lookup_min = int(prompt_lookup_min)
        self.prompt_lookup_max = int(prompt_lookup_max)

    def propose(self, token_ids: np.ndarray, max_num_tokens: int | None = None) -> list[int]:
        """Draft tokens for one request whose known tokens (prompt + output so far) are token_ids (1-D int64)."""
        k = self.num_speculative_tokens if max_num_tokens is None else min(self.num_speculative_tokens,
                                                                          int(max_num_tokens))
        tokens = np.asarray(token_ids)
        total = tokens.shape[0]
        if k <= 0 or total <= self.prompt_lookup_min:
            return []
        ends = np.flatnonzero(tokens[:-1] == tokens[-1])  # where an earlier copy of the last token ends
        if ends.size == 0:
            return []
        n = 1  # every candidate in `ends` ends a copy of the last n tokens
        while n < self.prompt_lookup_max:
            # a copy of the last n + 1 tokens ending at e: e - n >= 0 and t[e - n] == t[L - 1 - n]
            longer = ends[np.searchsorted(ends, n):]
            longer = longer[tokens[longer - n] == tokens[total - 1 - n]]
            if longer.size == 0:
                break
            ends, n = longer, n + 1
        if n < self.prompt_lookup_min:
            return []
        start = int(ends[0]) + 1  # `ends` is ascending: ends[0] is the earliest occurrence
        return tokens[start:start + k].tolist()
