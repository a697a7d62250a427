"""Per-request timing kept by the frontend, turned into per-iteration stats for the stat loggers.

The frontend sees every engine request (one per parallel-sampling child) when it is sent to the
core, which children make up one user request, every EngineCoreOutputs message as it arrives, and
every abort; this module turns those events into `IterationStats`, the only thing stat loggers
consume. Per-request histograms see finished requests only (stop/length), as vLLM's do; an abort
counts only as a finish reason.

A request's life, as vLLM V1 measures it: arrival (frontend) -> first scheduled (core) -> first
token -> last token. Queue time = scheduled - arrival; prefill = first token - scheduled;
decode = last token - first token; inference = prefill + decode (= last token - scheduled).
The scheduled time is `arrival_time + queue_times[id]` from the core (the core's step start);
token times are the core's message timestamps, so these intervals exclude frontend lag. TTFT and
e2e latency are measured on the frontend's clock at the moment the message is processed.

Invariants:
- `StatsTracker.requests` holds exactly the engine requests that were sent and have not finished
  or been aborted: an entry is removed on a finish_reason from the core, on an abort (which also
  covers children finished by a stop string), or by `clear()` when the engine dies.
- Times are wall-clock seconds (`time.time()`), the clock EngineCoreRequest.arrival_time uses and
  the core stamps its messages with (same host).
- Every interval observed is >= 0 and inference >= decode, prefill (clamped at 0 against clock steps).
- Token counters count every token the core produced (prompt tokens once per engine request, when
  its first token arrives), so throughput adds up across n > 1.
- A user request's `n` and its children's largest generation length are observed once, when its
  last child finishes, and never for a user request that was aborted (vLLM does the same).
- A request that ends in error (finish_reason "error" from the core, failed by the frontend, or lost
  with a core that died) counts only as a finish reason, like an abort: no per-request histograms.
- Across an engine-core restart the tracker keeps the requests that are resubmitted (their timings
  run on from their first arrival) and drops the failed ones through `fail()`, so `requests` stays
  exactly the set of unfinished engine requests. `IterationStats.engine_healthy` /
  `engine_restarts` carry the engine's health to the stat loggers (None: unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class UserRequestTiming:
    """A user request with n > 1 (or best_of > 1): its children share one of these."""

    n: int
    num_unfinished: int
    max_num_generation_tokens: int = 0
    aborted: bool = False


@dataclass
class RequestTiming:
    arrival_time: float
    num_prompt_tokens: int
    max_tokens: int | None
    scheduled_time: float | None = None  # core clock: start of the step that first scheduled it
    first_token_time: float | None = None  # core clock (message timestamp)
    last_token_time: float | None = None
    num_generation_tokens: int = 0
    num_cached_tokens: int = 0
    parent: UserRequestTiming | None = None


@dataclass
class FinishedRequest:
    """A finished (not aborted) engine request, as the per-request histograms observe it."""

    e2e_latency: float
    queue_time: float
    prefill_time: float
    decode_time: float
    inference_time: float
    time_per_output_token: float  # decode / (generation tokens - 1); 0 with at most one token
    num_prompt_tokens: int
    num_generation_tokens: int
    num_cached_tokens: int
    max_tokens: int | None


@dataclass
class IterationStats:
    """What happened between two EngineCoreOutputs messages, plus the scheduler's state after."""

    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # of num_prompt_tokens, served from the prefix cache
    num_scheduled_tokens: int = 0  # tokens of the engine step launched for this message (0: none)
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    finished_reasons: list[str] = field(default_factory=list)  # every finish, aborts included
    finished_requests: list[FinishedRequest] = field(default_factory=list)  # aborts excluded
    n_params: list[int] = field(default_factory=list)  # per finished user request
    max_num_generation_tokens: list[int] = field(default_factory=list)  # per finished user request
    scheduler_stats: dict | None = None
    cache_config: Any = None  # the engine's CacheConfig (for the info metric), once known
    engine_healthy: bool | None = None  # set when the engine core's health changes (None: no news)
    engine_restarts: int | None = None  # engine-core restarts so far, with engine_healthy

    def empty(self) -> bool:
        return not (self.num_prompt_tokens or self.num_generation_tokens or self.finished_reasons
                    or self.scheduler_stats or self.num_scheduled_tokens or self.engine_healthy is not None)


class StatsTracker:
    def __init__(self) -> None:
        self.requests: dict[str, RequestTiming] = {}
        self.pending = IterationStats()
        self.cache_config: Any = None  # set by the engine once the core has sized the cache

    # ---- events -------------------------------------------------------------------------------
    def on_add(self, core_request: Any) -> None:
        params = core_request.sampling_params
        self.requests[core_request.request_id] = RequestTiming(
            arrival_time=core_request.arrival_time, num_prompt_tokens=len(core_request.prompt_token_ids),
            max_tokens=params.max_tokens if params is not None else None,
        )

    def on_user_request(self, child_ids: list[str], n: int) -> None:
        """The engine requests `child_ids` (already added) are the children of one user request."""
        parent = UserRequestTiming(n=n, num_unfinished=len(child_ids))
        for child_id in child_ids:
            timing = self.requests.get(child_id)
            if timing is not None:
                timing.parent = parent

    def on_abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            timing = self.requests.pop(request_id, None)
            if timing is not None:
                self._finish(timing, "abort", now=None)

    def on_outputs(self, message: Any, now: float) -> None:
        stats = self.pending
        core_now = getattr(message, "timestamp", 0.0) or now
        for request_id, seconds in message.queue_times.items():
            timing = self.requests.get(request_id)
            if timing is not None:
                timing.scheduled_time = timing.arrival_time + seconds
        for out in message.outputs:
            timing = self.requests.get(out.request_id)
            if timing is None:
                continue
            if out.new_token_ids:
                stats.num_generation_tokens += len(out.new_token_ids)
                timing.num_generation_tokens += len(out.new_token_ids)
                if timing.first_token_time is None:
                    timing.first_token_time = core_now
                    timing.num_cached_tokens = out.num_cached_tokens
                    stats.num_prompt_tokens += timing.num_prompt_tokens
                    stats.num_cached_prompt_tokens += out.num_cached_tokens
                    stats.time_to_first_tokens.append(max(0.0, now - timing.arrival_time))
                else:
                    stats.inter_token_latencies.append(max(0.0, core_now - timing.last_token_time))
                timing.last_token_time = core_now
            if out.finish_reason is not None:
                del self.requests[out.request_id]
                if timing.first_token_time is None:  # a pooling request: its vector is its one output
                    timing.first_token_time = timing.last_token_time = core_now
                    timing.num_cached_tokens = out.num_cached_tokens
                self._finish(timing, out.finish_reason, now)
        stats.scheduler_stats = message.stats
        stats.num_scheduled_tokens += getattr(message, "num_scheduled_tokens", 0)

    def _finish(self, timing: RequestTiming, reason: str, now: float | None) -> None:
        stats = self.pending
        stats.finished_reasons.append(reason)
        parent = timing.parent
        if reason in ("abort", "error") or now is None:
            if parent is not None:
                parent.aborted = True  # an aborted user request observes no n / max length
            return
        stats.finished_requests.append(_finished_request(timing, now))
        if parent is None:
            stats.n_params.append(1)
            stats.max_num_generation_tokens.append(timing.num_generation_tokens)
            return
        parent.max_num_generation_tokens = max(parent.max_num_generation_tokens, timing.num_generation_tokens)
        parent.num_unfinished -= 1
        if parent.num_unfinished == 0 and not parent.aborted:
            stats.n_params.append(parent.n)
            stats.max_num_generation_tokens.append(parent.max_num_generation_tokens)

    def finish_by_stop_string(self, request_ids: list[str], now: float) -> None:
        """Children the frontend finished (stop string) before the core did: counted as 'stop'."""
        for request_id in request_ids:
            timing = self.requests.pop(request_id, None)
            if timing is not None:
                self._finish(timing, "stop", now)

    def fail(self, request_ids: list[str]) -> None:
        """Engine requests that ended in error outside the core's outputs (e.g. lost with a dead core)."""
        for request_id in request_ids:
            timing = self.requests.pop(request_id, None)
            if timing is not None:
                self._finish(timing, "error", now=None)

    def clear(self) -> None:
        self.requests.clear()

    def take(self) -> IterationStats:
        stats, self.pending = self.pending, IterationStats()
        stats.cache_config = self.cache_config
        return stats


def _finished_request(timing: RequestTiming, now: float) -> FinishedRequest:
    first = timing.first_token_time if timing.first_token_time is not None else now
    last = timing.last_token_time if timing.last_token_time is not None else first
    scheduled = timing.scheduled_time if timing.scheduled_time is not None else first
    queue_time = max(0.0, scheduled - timing.arrival_time)
    prefill = max(0.0, first - scheduled)
    decode = max(0.0, last - first)
    num_generated = timing.num_generation_tokens
    return FinishedRequest(
        e2e_latency=max(0.0, now - timing.arrival_time), queue_time=queue_time, prefill_time=prefill,
        decode_time=decode, inference_time=prefill + decode,
        time_per_output_token=decode / (num_generated - 1) if num_generated > 1 else 0.0,
        num_prompt_tokens=timing.num_prompt_tokens, num_generation_tokens=num_generated,
        num_cached_tokens=timing.num_cached_tokens, max_tokens=timing.max_tokens,
    )
