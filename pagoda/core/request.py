"""A request as the scheduler sees it: token ids, progress, and status.

Invariants:
- `all_token_ids == prompt_token_ids + output_token_ids`, always.
- `num_computed_tokens <= num_tokens` between steps; tokens in [num_computed_tokens, num_tokens) still
  need a forward pass. There are no prefill/decode phases: a decode is simply one token to catch up
  on. While a step is in flight, num_computed_tokens already counts that step's scheduled tokens,
  which include the draft tokens it verifies (speculative decoding); when its output arrives, the
  scheduler takes back the rejected positions, so the inequality holds again. Under async scheduling
  the step after may already be scheduled: then num_computed_tokens <= num_tokens + num_pending_tokens
  (the in-flight tokens counted as if every draft were accepted), and the same take-back restores it.
- `spec_token_ids` are the drafts proposed for the request's next step (empty without speculative
  decoding, after preemption, and once finished); they are never part of `all_token_ids`. With drafts
  proposed on the device (async scheduling) they are placeholders (-1): how many the runner drafts per
  step, whose ids only the device knows.
- `status` only moves forward through RequestStatus, except RUNNING <-> PREEMPTED (recompute).
  FINISHED_ERROR (finish_reason "error", vLLM V1's FinishReason.ERROR) marks a request the engine
  failed on its own (an exception while preparing, sampling or post-processing it); the engine goes on.
- `block_hashes[i]` is the chained hash of full block i of `all_token_ids` (kept current by
  KVCacheManager), rooted at `cache_salt` (the hash of the request's images, None for text); it never
  covers a partial block.
- A pooling request (`pooling_params` set, `sampling_params` None) is scheduled only whole, never
  chunked or served from the prefix cache, and finishes in the step that computes its prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum

from pagoda.multimodal.inputs import cache_salt
from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import SamplingParams


class RequestStatus(IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything past this line is finished.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH_CAPPED = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass
class EngineCoreRequest:
    """What the frontend hands the engine core: already tokenized and validated.

    Exactly one of `sampling_params` (generate) and `pooling_params` (embed) is set.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams | None
    eos_token_id: int | None
    arrival_time: float = field(default_factory=time.time)
    priority: int = 0
    pooling_params: PoolingParams | None = None
    mm_inputs: list | None = None  # multimodal.inputs.ImageInput per image, in prompt order (None: text only)


class Request:
    def __init__(self, core_request: EngineCoreRequest, max_model_len: int) -> None:
        params = core_request.sampling_params
        self.request_id = core_request.request_id
        self.sampling_params = params
        self.pooling_params = core_request.pooling_params
        self.eos_token_id = core_request.eos_token_id
        self.arrival_time = core_request.arrival_time
        self.priority = core_request.priority
        self.prompt_token_ids = list(core_request.prompt_token_ids)
        self.mm_inputs = core_request.mm_inputs
        # The root of the request's prefix-cache hash chain: its images' hashes (None for text), so the same
        # tokens with another image never hit the cache.
        self.cache_salt = cache_salt(self.mm_inputs or [])
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.all_token_ids = list(self.prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first schedule
        self.num_preemptions = 0
        # Async scheduling: the tokens that sampling steps still in flight can yield, at most (one per plain
        # step, 1 + its drafts per verify step): computed in the forward pass that samples them, not yet known
        # here. `num_pending_steps` counts those steps; each yields at least one token.
        self.num_pending_tokens = 0
        self.num_pending_steps = 0
        self.spec_token_ids: list[int] = []  # drafts for the next step (speculative decoding)
        # Structured output: the request's grammar state (structured_output.RequestGrammar), set by the
        # engine core once compiled; it has accepted exactly the output tokens appended so far.
        self.grammar = None
        # While not None the request is inside its reasoning (a reasoning parser is set): its tokens bypass the
        # grammar, until it samples this id (the end-of-reasoning marker), which the grammar does not see either.
        self.reasoning_end: int | None = None
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.block_hashes: list[bytes] = []
        if params is None:  # a pooling request: its prompt in one step, then one vector, no tokens
            self.max_tokens = 0
            self.skip_prefix_cache = True  # pooling needs every prompt position's hidden state
            return
        limit = max_model_len - self.num_prompt_tokens
        self.max_tokens = min(params.max_tokens, limit) if params.max_tokens is not None else limit
        # Prompt logprobs need logits at every prompt position, so a cache hit would skip them.
        self.skip_prefix_cache = params.prompt_logprobs is not None

    @property
    def is_pooling(self) -> bool:
        return self.pooling_params is not None

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def pending_tokens_finish_it(self) -> bool:
        """Whether the tokens in flight will certainly end the request (max_tokens / max_model_len)."""
        return self.num_pending_steps > 0 and self.num_output_tokens + self.num_pending_steps >= self.max_tokens

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def check_stop(self) -> RequestStatus | None:
        """After a token was appended: the finished status it causes, if any."""
        params = self.sampling_params
        last = self.output_token_ids[-1]
        if self.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and last == self.eos_token_id:
                return RequestStatus.FINISHED_STOPPED
            if last in params.all_stop_token_ids:
                self.stop_reason = last if last in params.stop_token_ids else None
                return RequestStatus.FINISHED_STOPPED
        if self.num_output_tokens >= self.max_tokens:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        return None
