"""The scheduler: one token budget per step, shared by decodes and (chunked) prefills.

Every request simply has `num_computed_tokens` catching up with `num_tokens`; a step gives each
scheduled request some of its missing tokens. Running requests go first (so decodes never starve),
then waiting ones are admitted while budget, sequence slots and KV blocks last.

Invariants:
- A request is in exactly one of `waiting`, `running`, or neither (finished); `requests` holds
  every unfinished request.
- A running request owns KV blocks for all its computed tokens; a waiting one owns none.
- When blocks run out, the lowest-priority running request (the latest arrival under fcfs) is
  preempted: its blocks are freed, its computed tokens forgotten, and it waits at the front to be
  recomputed from its prompt plus the tokens it already generated. No request is ever dropped.
- After `schedule()`, each scheduled request's num_computed_tokens already counts its scheduled
  tokens; `update_from_output()` then appends the sampled tokens and finishes requests.
- Async scheduling: step n+1 may be scheduled before step n's sampled tokens are known. A request
  that samples in a step counts `num_pending_tokens` (1, or 1 + its drafts in a verify step: as if all
  were accepted) and one `num_pending_steps` until that step's output arrives; the next step can
  already compute the pending token (the runner takes it from the device). A token that arrives for a
  request preempted meanwhile is still appended; one for a finished request is dropped.
- Speculative decoding with async scheduling (`device_drafts`: the runner drafts on the device, the
  draft model or the benchmark's oracle): a request whose verify step is in flight gets placeholder
  drafts (its `spec_token_ids` say how many the runner drafts) for the next step, scheduled as if every
  draft in flight were accepted; every cap below then counts the in-flight tokens at their most, so
  they stay bounds. The runner corrects positions and slots on the device from the accepted counts,
  and the take-back below makes the counts exact once the output arrives. Grammar requests get no
  device drafts (a grammar must see drafts on the host).
- Speculative decoding (`speculative_config`): a running request
  whose whole remainder fits gets its `spec_token_ids` (the runner's drafts from its last step) as
  `scheduled_spec_decode_tokens`, capped by the step's budget, by its remaining max_tokens (the
  verify step yields at most k + 1 tokens, so nothing overshoots max_tokens or max_model_len), by
  `max_model_len` of the speculative config, and dropped entirely while `disable_by_batch_size` or
  more requests run (then the step also tells the runner not to propose: `propose_drafts`). Its
  scheduled tokens count the drafts; when the output arrives with n tokens
  (1 <= n <= k + 1), the k + 1 - n rejected positions are taken back from num_computed_tokens, so
  `num_computed_tokens <= num_tokens` holds again (the KV written at rejected positions is garbage
  that the next step overwrites; prefix-cache hashes only ever cover known tokens). With a draft model
  (method "draft_model"), every allocation also reserves k lookahead slots (capped at max_model_len),
  where the runner's draft model writes the KV of the tokens it drafts after the step.
- Structured output: a request with a grammar (`Request.grammar`, compiled before the engine core adds
  it) feeds it every output token as it is appended, before the stop checks; a token the grammar
  refuses fails the request. Its drafts are cut to the prefix the grammar accepts. Each step lists the
  grammar requests that sample in it (`structured_output_request_ids`). While such a request is inside its
  reasoning (`Request.reasoning_end` set: a reasoning parser, and enable_in_reasoning off) its tokens bypass the
  grammar until the end marker, and its drafts stop before that marker.
- Images (core/encoder_budget.py): a chunk that reaches an image the runner does not hold encoded is charged
  that image's tokens against the step's encoder budget (max_num_batched_tokens; a step's first image always
  fits); a chunk stops before an image the budget cannot pay for.
- A pooling request is admitted only when its whole prompt fits the step's budget (never chunked),
  and finishes in `update_from_output()` of that step with the runner's pooled vector.
- Request isolation: `fail_requests()` finishes requests with status FINISHED_ERROR (finish_reason
  "error" and the reason in the output), frees their blocks (forgetting the prefix-cache hashes of
  those no one else holds: they may never have been written) and reports them in the next step's
  `finished_req_ids` like any finished request, so the runner drops their rows. An exception while
  updating one request in `update_from_output()` (appending, stop checks) fails that request only;
  the rest of the step is applied as usual.
- Pipeline parallelism (`batch_queue_depth` > 1: the engine keeps that many steps in flight, engine/core.py): a
  request whose step is in flight (`num_pending_steps`) is not scheduled again until that step's output arrived,
  so the steps in flight hold disjoint sampling requests and a stage never waits for a later stage's tokens; a
  step takes at most ceil(running / depth) running requests, so that lock-step decodes spread over the steps in
  flight instead of all riding one of them. A prompt's next chunk may follow its previous one at once (its
  tokens are known).
"""

from __future__ import annotations

import logging

from pagoda.config import CacheConfig, SchedulerConfig
from pagoda.core.encoder_budget import EncoderBudget
from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import EngineCoreRequest, Request, RequestStatus
from pagoda.core.request_queue import RequestQueue
from pagoda.core.spec_decode_stats import SpecDecodeStats
from pagoda.core.sched_output import (
    CachedRequestData,
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig,
                 speculative_config=None, batch_queue_depth: int = 1) -> None:
        if cache_config.num_blocks is None:
            raise ValueError("cache_config.num_blocks must be set (the worker sizes the cache) before scheduling")
        self.config = scheduler_config
        self.max_model_len = scheduler_config.max_model_len
        self.block_size = cache_config.block_size
        self.kv = KVCacheManager(cache_config.num_blocks, cache_config.block_size, cache_config.enable_prefix_caching)
        self.requests: dict[str, Request] = {}
        self.waiting = RequestQueue(scheduler_config.policy)
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()
        self.num_preemptions_total = 0
        self.speculative = speculative_config  # a config.SpeculativeConfig, or None
        self.spec_stats = SpecDecodeStats(speculative_config.num_speculative_tokens) if speculative_config else None
        draft_model = speculative_config is not None and speculative_config.method == "draft_model"
        self.num_lookahead_tokens = speculative_config.num_speculative_tokens if draft_model else 0
        # Async scheduling with speculation: the runner drafts on the device, one step ahead of the host, so a
        # request's drafts are placeholders scheduled while the step before is still in flight.
        self.device_drafts = speculative_config is not None and scheduler_config.async_scheduling
        self.encoder = EncoderBudget(scheduler_config.max_num_batched_tokens)  # image tokens encoded per step
        self.batch_queue_depth = batch_queue_depth  # steps the engine keeps in flight (pipeline parallelism)

    # ---- requests in and out ------------------------------------------------------------------
    def add_request(self, core_request: EngineCoreRequest) -> None:
        if core_request.request_id in self.requests:
            raise ValueError(f"request_id {core_request.request_id!r} is already in use")
        num_prompt = len(core_request.prompt_token_ids)
        if core_request.pooling_params is not None:
            if not 0 < num_prompt <= min(self.max_model_len, self.config.max_num_batched_tokens):
                raise ValueError(
                    f"prompt has {num_prompt} tokens; an embedding prompt must have at least 1 and at most "
                    f"max_model_len ({self.max_model_len}) tokens, all computed in one step"
                )
        elif not 0 < num_prompt < self.max_model_len:
            raise ValueError(
                f"prompt has {num_prompt} tokens; it must have at least 1 and fewer than max_model_len "
                f"({self.max_model_len}) so that one token can be generated"
            )
        request = Request(core_request, self.max_model_len)
        self.requests[request.request_id] = request
        self.waiting.add(request)

    def abort_requests(self, request_ids: list[str]) -> list[str]:
        """Finish requests at once and free their blocks; returns the ids that were still unfinished."""
        aborted = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self._free(request, RequestStatus.FINISHED_ABORTED)
            aborted.append(request_id)
        return aborted

    def fail_requests(self, errors: dict[str, str]) -> list[EngineCoreOutput]:
        """Finish requests (id -> reason) with "error" and free their blocks; one output per request that
        was still unfinished (unknown ids are skipped: a request can finish while its failure is reported)."""
        outputs = []
        for request_id, reason in errors.items():
            request = self.requests.get(request_id)
            if request is None:
                continue
            if request in self.running:  # by identity first; a failure may have left any status behind
                self.running.remove(request)
            else:
                try:
                    self.waiting.remove(request)
                except ValueError:
                    pass  # in neither queue (its update failed half-way): only its blocks are left
            blocks = self.kv.req_to_blocks.get(request_id, [])
            self._free(request, RequestStatus.FINISHED_ERROR)
            # Hashed at allocation, maybe never written: blocks others still hold keep their hashes.
            self.kv.pool.forget_unused_hashes(blocks)
            logger.error("request %s failed: %s", request_id, reason)
            outputs.append(EngineCoreOutput(request_id=request_id, new_token_ids=[], finish_reason="error",
                                            num_cached_tokens=request.num_cached_tokens, error=reason))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step -----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        new_reqs: list[NewRequestData] = []
        cached_reqs: list[CachedRequestData] = []
        preempted: list[Request] = []
        drafts: dict[str, list[int]] = {}
        spec_off = self.speculative is not None and self.speculative.disable_by_batch_size is not None and \
            len(self.running) >= self.speculative.disable_by_batch_size

        self.encoder.begin_step()
        index = 0
        pipelined = self.batch_queue_depth > 1
        max_running = -(-len(self.running) // self.batch_queue_depth)  # per step, with pipeline parallelism
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            if pipelined and (request.num_pending_steps or len(num_scheduled) >= max_running):
                index += 1  # its step is in flight; or this step has its share of the running requests
                continue
            missing = request.num_tokens + request.num_pending_tokens - request.num_computed_tokens
            num_new = min(missing, budget)
            if request.mm_inputs and num_new > 0:  # up to the first image the step cannot encode
                num_new = self.encoder.fit(request, request.num_computed_tokens, num_new)
            if num_new <= 0 or request.pending_tokens_finish_it:
                index += 1
                continue
            request_drafts = self._drafts(request, budget - num_new) if request.spec_token_ids and not spec_off \
                and num_new == missing else []
            num_new += len(request_drafts)
            num_preempted = len(preempted)
            new_blocks = self._allocate_or_preempt(request, num_new, num_scheduled, preempted)
            if new_blocks is None:
                break  # `request` itself was preempted; nothing later in the list fits either
            if len(preempted) > num_preempted:
                # Victims scheduled earlier in this loop (priority policy) give their budget back.
                budget = self.config.max_num_batched_tokens - sum(num_scheduled.values())
                index = self.running.index(request)
            num_scheduled[request.request_id] = num_new
            if request_drafts:
                drafts[request.request_id] = request_drafts
            budget -= num_new
            cached_reqs.append(CachedRequestData(request.request_id, [b.block_id for b in new_blocks], request.num_computed_tokens))
            index += 1
        cached_reqs = [c for c in cached_reqs if c.req_id in num_scheduled]

        if not preempted:
            budget = self._admit_waiting(budget, num_scheduled, new_reqs)

        drafts = {r: d for r, d in drafts.items() if r in num_scheduled}  # preempted ones lost theirs
        structured: list[str] = []
        for request_id, count in num_scheduled.items():
            request = self.requests[request_id]
            request.num_computed_tokens += count
            known_end = request.num_tokens + request.num_pending_tokens + len(drafts.get(request_id, ()))
            if not request.is_pooling and request.num_computed_tokens == known_end:
                # This step samples its next token(s): one, or up to 1 + drafts when it verifies drafts.
                request.num_pending_tokens += 1 + len(drafts.get(request_id, ()))
                request.num_pending_steps += 1
                if request.grammar is not None:
                    structured.append(request_id)
        output = SchedulerOutput(
            new_reqs=new_reqs,
            cached_reqs=cached_reqs,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=sum(num_scheduled.values()),
            finished_req_ids=self.finished_req_ids,
            preempted_req_ids={r.request_id for r in preempted},
            scheduled_spec_decode_tokens=drafts,
            propose_drafts=self.speculative is not None and not spec_off,
            structured_output_request_ids=structured,
        )
        self.finished_req_ids = set()
        return output

    def _drafts(self, request: Request, budget_left: int) -> list[int]:
        """The drafts `request` verifies this step: its proposed ones, capped (see the module docstring)."""
        pending = request.num_pending_tokens  # in flight, counted as if all accepted (caps stay upper bounds)
        if pending and not self.device_drafts:
            return []  # host drafts follow the tokens in flight, which are not known yet
        if self.device_drafts and request.grammar is not None:
            return []  # a grammar checks drafts on the host; device drafts are never seen there
        cap = min(len(request.spec_token_ids), budget_left, request.max_tokens - request.num_output_tokens - pending - 1)
        if self.speculative.max_model_len is not None:
            cap = min(cap, self.speculative.max_model_len - request.num_tokens - pending)
        return request.spec_token_ids[:cap] if cap > 0 else []

    def _lookahead(self, num_tokens_after_step: int) -> int:
        """Slots a draft model needs after a step that ends at `num_tokens_after_step` (0 without one)."""
        return max(0, min(self.num_lookahead_tokens, self.max_model_len - num_tokens_after_step))

    def _allocate_or_preempt(self, request, num_new, num_scheduled, preempted):
        """Blocks for `request`'s next tokens, preempting others (or itself) until they fit."""
        while True:
            new_blocks = self.kv.allocate_slots(request, num_new,
                                                num_lookahead_tokens=self._lookahead(request.num_computed_tokens + num_new))
            if new_blocks is not None:
                return new_blocks
            victim = self._pick_victim()
            self.running.remove(victim)
            num_scheduled.pop(victim.request_id, None)
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return None

    def _pick_victim(self) -> Request:
        if self.config.policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival_time))
        return self.running[-1]

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        self.encoder.release(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.add_front(request)

    def _admit_waiting(self, budget: int, num_scheduled: dict[str, int], new_reqs: list[NewRequestData]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting.peek()
            if request.num_pending_tokens:
                break  # preempted while a token was in flight: resumes once the token arrives
            computed_blocks, num_computed = self.kv.get_computed_blocks(request)
            num_new = request.num_tokens - num_computed
            if num_new > budget:
                if not self.config.enable_chunked_prefill or request.is_pooling:
                    break  # a pooling prompt runs whole (add_request checked that it fits a step)
                num_new = budget
            if request.mm_inputs:
                fitted = self.encoder.fit(request, num_computed, num_new)
                if fitted <= 0 or (fitted < num_new and not self.config.enable_chunked_prefill):
                    break  # its next image waits for a step with encoder budget left
                num_new = fitted
            new_blocks = self.kv.allocate_slots(request, num_new, computed_blocks, num_computed,
                                                self._lookahead(num_computed + num_new))
            if new_blocks is None:
                break
            self.waiting.pop()
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_computed
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_computed
            self.running.append(request)
            num_scheduled[request.request_id] = num_new
            budget -= num_new
            new_reqs.append(
                NewRequestData(
                    req_id=request.request_id,
                    token_ids=list(request.all_token_ids),
                    num_prompt_tokens=request.num_prompt_tokens,
                    sampling_params=request.sampling_params,
                    block_ids=self.kv.get_block_ids(request.request_id),
                    num_computed_tokens=num_computed,
                    pooling_params=request.pooling_params,
                    mm_inputs=request.mm_inputs,
                )
            )
        return budget

    def update_from_output(self, sched: SchedulerOutput, result: ModelRunnerOutput) -> list[EngineCoreOutput]:
        """Append sampled tokens, apply stop rules, free what finished; one output per changed request.

        Requests the runner failed come first (finished with "error"); an exception while updating one
        request fails that request only (the try costs nothing while nothing raises)."""
        outputs: list[EngineCoreOutput] = self.fail_requests(result.failed) if result.failed else []
        errors: dict[str, str] = {}
        any_finished = False
        grammar_tokens: list[tuple[str, Request, int]] = []  # one token each, given to their grammars below
        for request_id in sched.num_scheduled_tokens:
            request = self.requests.get(request_id)
            if request is None:
                continue  # finished, aborted or failed while the step ran
            try:
                sampled = result.sampled_token_ids.get(request_id, ())
                verified = sched.scheduled_spec_decode_tokens.get(request_id)
                if sampled:
                    request.num_pending_tokens -= 1 + len(verified or ())
                    request.num_pending_steps -= 1
                if verified and sampled:
                    self.spec_stats.observe(len(verified), len(sampled) - 1)
                    if request.status == RequestStatus.RUNNING:
                        request.num_computed_tokens -= len(verified) + 1 - len(sampled)  # rejected positions
                if request.status != RequestStatus.RUNNING and not sampled:
                    continue
                if request.is_pooling:
                    pooled = result.pooler_output.get(request_id)
                    if pooled is not None:
                        outputs.append(EngineCoreOutput(request_id=request_id, new_token_ids=[], finish_reason="stop",
                                                        pooling_output=pooled))
                        self._free(request, RequestStatus.FINISHED_STOPPED)
                        any_finished = True
                    continue
                new_token_ids: list[int] = []
                status = None
                for token_id in sampled:
                    if request.grammar is not None:
                        if request.reasoning_end is not None:  # reasoning: no grammar until its end marker
                            if token_id == request.reasoning_end:
                                request.reasoning_end = None
                        elif len(sampled) == 1 and request_id not in result.draft_token_ids:  # drafts: see below
                            if not sched.grammar_accepts_deferred:  # else the engine core's grammar thread does it
                                grammar_tokens.append((request_id, request, token_id))
                        elif not request.grammar.accept_tokens([token_id]):
                            raise ValueError(f"token {token_id} is not allowed by the request's grammar")
                    request.append_output_token(token_id)
                    new_token_ids.append(token_id)
                    status = request.check_stop()
                    if status is not None:
                        break
                if status is None and request.status == RequestStatus.RUNNING:
                    drafts = result.draft_token_ids.get(request_id, [])
                    if drafts and request.grammar is not None:  # only drafts the grammar allows
                        if request.reasoning_end is not None:  # up to the end of reasoning (next step's grammar)
                            if request.reasoning_end in drafts:
                                drafts = drafts[:drafts.index(request.reasoning_end)]
                        else:
                            drafts = drafts[:request.grammar.validate_tokens(drafts)]
                    request.spec_token_ids = drafts
                prompt_logprobs = result.prompt_logprobs.get(request_id)
                if not new_token_ids and prompt_logprobs is None:
                    continue
                logprobs = result.logprobs.get(request_id)
                outputs.append(
                    EngineCoreOutput(
                        request_id=request_id,
                        new_token_ids=new_token_ids,
                        new_logprobs=logprobs[: len(new_token_ids)] if logprobs is not None else None,
                        new_prompt_logprobs=prompt_logprobs,
                        finish_reason=status.finish_reason if status is not None else None,
                        stop_reason=request.stop_reason,
                        num_cached_tokens=request.num_cached_tokens,
                    )
                )
                if status is not None:
                    if request.status != RequestStatus.RUNNING:
                        self.waiting.remove(request)  # preempted while its last token was in flight
                    self._free(request, status)
                    any_finished = True
            except Exception as exc:  # noqa: BLE001 - one request's bookkeeping must not stop the engine
                logger.exception("updating request %s after its step failed", request_id)
                errors[request_id] = f"updating request {request_id} after a step failed: {type(exc).__name__}: {exc}"
        if grammar_tokens:  # in one batch (per backend); a refused token fails its request
            grammars = [request.grammar for _, request, _ in grammar_tokens]
            accepted = type(grammars[0]).accept_batch(grammars, [token for _, _, token in grammar_tokens])
            for (request_id, _, token_id), ok in zip(grammar_tokens, accepted):
                if not ok:
                    errors[request_id] = (f"updating request {request_id} after a step failed: ValueError: token "
                                          f"{token_id} is not allowed by the request's grammar")
        if any_finished:
            self.running = [r for r in self.running if r.status == RequestStatus.RUNNING]
        if errors:
            outputs += self.fail_requests(errors)
        return outputs

    def _free(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.kv.free(request)
        self.encoder.release(request)
        del self.requests[request.request_id]
        self.finished_req_ids.add(request.request_id)

    # ---- observability ------------------------------------------------------------------------
    def stats(self) -> dict:
        return {
            "num_running": len(self.running),
            "num_waiting": len(self.waiting),
            "kv_cache_usage": self.kv.usage,
            "prefix_cache_queries": self.kv.prefix_queries,
            "prefix_cache_hits": self.kv.prefix_hits,
            "num_preemptions": self.num_preemptions_total,
            **(self.spec_stats.as_dict() if self.spec_stats is not None else {}),
        }
