"""Speculative decoding's counters, kept by the scheduler and sent with its stats (vLLM's names).

Invariants:
- Every counter is cumulative over the engine core's life; the frontend's stat loggers turn them into
  Prometheus counters (`vllm:spec_decode_*`) and the periodic log line by taking differences.
- One "draft" is one (request, step) pair that verified at least one draft token; its accepted tokens
  are the leading drafts the target agreed with (the verify step's output minus its one sampled token),
  counted before any stop rule cuts the output, so the acceptance rate measures the proposer alone.
- `accepted_per_pos[i]` counts drafts whose position i was accepted; it never exceeds `num_drafts`, and
  its sum is `num_accepted_tokens`.
"""

from __future__ import annotations


class SpecDecodeStats:
    def __init__(self, num_speculative_tokens: int) -> None:
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_pos = [0] * num_speculative_tokens

    def observe(self, num_draft_tokens: int, num_accepted: int) -> None:
        """One request's verify step: `num_draft_tokens` drafts, of which the first `num_accepted` were accepted."""
        if num_draft_tokens <= 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        for position in range(num_accepted):
            self.accepted_per_pos[position] += 1

    def as_dict(self) -> dict:
        return {
            "spec_decode_num_drafts": self.num_drafts,
            "spec_decode_num_draft_tokens": self.num_draft_tokens,
            "spec_decode_num_accepted_tokens": self.num_accepted_tokens,
            "spec_decode_num_accepted_tokens_per_pos": list(self.accepted_per_pos),
        }
