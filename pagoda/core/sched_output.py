"""Typed messages between the scheduler, the model runner and the frontend.

Invariants:
- SchedulerOutput describes one step completely: the runner needs nothing else from the scheduler.
  New (or resumed-after-preemption) requests carry all their tokens; running ones carry only
  their new block ids, since the runner keeps its own copy of every running request's tokens.
- `num_scheduled_tokens` has one entry per request in the step, and they sum to
  `total_num_scheduled_tokens`. A request with draft tokens in `scheduled_spec_decode_tokens` (k of
  them) has its missing known tokens plus its k drafts scheduled: the step verifies the drafts and
  samples at each of the last k + 1 positions.
- `ModelRunnerOutput.sampled_token_ids[r]` is ragged: the tokens request r gained in the step, in
  order (none for a prefill chunk that samples nothing, one for a plain decode, 1 + the accepted
  drafts for a verify step); `logprobs[r]`, when asked, has one entry per token.
  `draft_token_ids[r]` are drafts proposed for r's next step (speculative decoding only).
- Ids in `finished_req_ids` and `preempted_req_ids` were dropped by the scheduler before this
  step; the runner drops its state for them before preparing the step.
- `structured_output_request_ids` lists every request of the step that samples (its scheduled tokens
  reach its last known token) and has a grammar; the grammar bitmask's rows follow that order, 1 + k
  rows for a request verifying k drafts.
- `ModelRunnerOutput.failed` names the requests the runner could not serve (an exception while adding,
  preparing or sampling that one request); the scheduler finishes them with "error" before anything
  else of the step. An `EngineCoreOutput` with finish_reason "error" carries the reason in `error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import SamplingParams

# One position's logprobs: (token ids, logprobs, rank of the chosen token); ids[0] is the chosen one.
PositionLogprobs = tuple[list[int], list[float], int]


@dataclass
class NewRequestData:
    req_id: str
    token_ids: list[int]  # prompt plus any output already generated (after preemption)
    num_prompt_tokens: int
    sampling_params: SamplingParams | None
    block_ids: list[int]
    num_computed_tokens: int  # before this step (prefix-cache hits)
    pooling_params: PoolingParams | None = None
    mm_inputs: list | None = None  # the request's images (multimodal.inputs.ImageInput), None for text


@dataclass
class CachedRequestData:
    req_id: str
    new_block_ids: list[int]
    num_computed_tokens: int  # before this step


@dataclass
class SchedulerOutput:
    new_reqs: list[NewRequestData]
    cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    finished_req_ids: set[str] = field(default_factory=set)
    preempted_req_ids: set[str] = field(default_factory=set)
    # Draft tokens to verify this step, per request that has any (speculative decoding).
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)
    # Whether the runner proposes drafts for the next step (False while disable_by_batch_size holds).
    propose_drafts: bool = False
    # Structured output: the requests that sample in this step under a grammar, in step order. The
    # runner then samples only once the engine hands it their token bitmask (one row per sampled
    # position: 1 + the request's drafts), built after the previous step's tokens reached the grammars.
    structured_output_request_ids: list[str] = field(default_factory=list)
    # Set by the engine core when its grammar thread gives this step's sampled tokens to the grammars
    # (async scheduling, no speculative decoding): update_from_output then leaves the grammars alone.
    grammar_accepts_deferred: bool = False

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class ModelRunnerOutput:
    """Tokens gained per request of the step (see the module docstring: ragged under speculation)."""

    sampled_token_ids: dict[str, list[int]]
    logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)
    # Pooling requests whose prompt finished this step: one float32 CPU tensor each (torch, but the
    # scheduler only passes it along).
    pooler_output: dict[str, Any] = field(default_factory=dict)
    # Requests that failed in the runner this step: request id -> reason (usually empty).
    failed: dict[str, str] = field(default_factory=dict)
    # Speculative decoding: drafts proposed for each request's next step (empty when none).
    draft_token_ids: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class EngineCoreOutput:
    """What the frontend learns about one request after a step."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[PositionLogprobs] | None = None
    new_prompt_logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    pooling_output: Any = None  # a pooling request's vector (float32 CPU tensor), with finish_reason "stop"
    error: str | None = None  # with finish_reason "error": what went wrong, naming the request

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
