"""What `LLM.generate` returns, with vLLM's class and field names.

Invariants:
- `RequestOutput.outputs` is ordered by `CompletionOutput.index` (0..n-1); with output_kind DELTA it
  holds only the completions that changed since the previous output, still in index order.
- A logprobs entry is one dict per generated (or prompt) position, from token id to `Logprob`;
  it always holds the chosen token, plus the top-k; `rank` is 1 for the most likely token.
- prompt_logprobs[0] is None: the first prompt token has no predecessor to score it.
- finish_reason "error" (vLLM V1's FinishReason.ERROR) means the engine failed that completion on its
  own (e.g. a user logits processor raised); `CompletionOutput.error` says why. Other requests are
  unaffected.
- Pooling outputs: `PoolingRequestOutput.outputs.data` is the raw pooled float32 tensor (CPU);
  `EmbeddingRequestOutput.outputs.embedding` is the same vector as a list of floats, and
  `ScoringRequestOutput.outputs.score` a float. This module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    error: str | None = None  # Pagoda only: with finish_reason "error", what failed (naming the request)

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


@dataclass
class PoolingOutput:
    data: Any  # torch.Tensor, float32 on the CPU


@dataclass
class PoolingRequestOutput:
    request_id: str
    outputs: Any  # PoolingOutput, or EmbeddingOutput / ScoringOutput in the subclasses
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @classmethod
    def from_base(cls, pooling_output: PoolingOutput) -> "EmbeddingOutput":
        data = pooling_output.data
        if data.ndim != 1:
            raise ValueError(f"an embedding must be one vector, got shape {tuple(data.shape)}")
        return cls(data.tolist())

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput(PoolingRequestOutput):
    @classmethod
    def from_base(cls, request_output: PoolingRequestOutput) -> "EmbeddingRequestOutput":
        return cls(request_output.request_id, EmbeddingOutput.from_base(request_output.outputs),
                   request_output.prompt_token_ids, request_output.finished)


@dataclass
class ScoringOutput:
    score: float


@dataclass
class ScoringRequestOutput(PoolingRequestOutput):
    pass
