"""What `LLM.generate` returns, with vLLM's class and field names.

Invariants:
- `RequestOutput.outputs` is ordered by `CompletionOutput.index` (0..n-1).
- A logprobs entry is one dict per generated (or prompt) position, from token id to `Logprob`;
  it always holds the chosen token, plus the top-k; `rank` is 1 for the most likely token.
- prompt_logprobs[0] is None: the first prompt token has no predecessor to score it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[PositionLogprobs] | None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[PositionLogprobs | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: dict = field(default_factory=dict)
