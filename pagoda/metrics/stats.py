"""Per-request timing kept by the frontend, turned into per-iteration stats for the stat loggers.

The frontend sees every engine request (one per parallel-sampling child) when it is sent to the
core, every EngineCoreOutputs message as it arrives, and every user request as it finishes; this
module turns those three events into `IterationStats`, the only thing stat loggers consume.

Invariants:
- `StatsTracker.requests` holds exactly the engine requests that were sent and have not finished
  or been aborted: an entry is removed on a finish_reason from the core, on an abort (which also
  covers children finished by a stop string), or by `clear()` when the engine dies.
- Times are wall-clock seconds (`time.time()`), the clock EngineCoreRequest.arrival_time uses.
- Token counters count every token the core produced (prompt tokens once per engine request, when
  its first token arrives), so throughput adds up across n > 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestTiming:
    arrival_time: float
    num_prompt_tokens: int
    first_token_time: float | None = None
    last_token_time: float | None = None
    num_generation_tokens: int = 0


@dataclass
class IterationStats:
    """What happened between two EngineCoreOutputs messages, plus the scheduler's state after."""

    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    queue_times: list[float] = field(default_factory=list)
    e2e_latencies: list[float] = field(default_factory=list)
    finished_reasons: list[str] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)  # of finished engine requests
    generation_lens: list[int] = field(default_factory=list)
    scheduler_stats: dict | None = None

    def empty(self) -> bool:
        return not (self.num_prompt_tokens or self.num_generation_tokens or self.finished_reasons
                    or self.queue_times or self.scheduler_stats)


class StatsTracker:
    def __init__(self) -> None:
        self.requests: dict[str, RequestTiming] = {}
        self.pending = IterationStats()

    # ---- events -------------------------------------------------------------------------------
    def on_add(self, core_request: Any) -> None:
        self.requests[core_request.request_id] = RequestTiming(
            arrival_time=core_request.arrival_time, num_prompt_tokens=len(core_request.prompt_token_ids)
        )

    def on_abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            timing = self.requests.pop(request_id, None)
            if timing is not None:
                self._finish(timing, "abort", now=None)

    def on_outputs(self, message: Any, now: float) -> None:
        stats = self.pending
        for request_id, seconds in message.queue_times.items():
            if request_id in self.requests:
                stats.queue_times.append(seconds)
        for out in message.outputs:
            timing = self.requests.get(out.request_id)
            if timing is None:
                continue
            if out.new_token_ids:
                stats.num_generation_tokens += len(out.new_token_ids)
                timing.num_generation_tokens += len(out.new_token_ids)
                if timing.first_token_time is None:
                    timing.first_token_time = now
                    stats.num_prompt_tokens += timing.num_prompt_tokens
                    stats.time_to_first_tokens.append(now - timing.arrival_time)
                else:
                    stats.inter_token_latencies.append(now - timing.last_token_time)
                timing.last_token_time = now
            if out.finish_reason is not None:
                del self.requests[out.request_id]
                self._finish(timing, out.finish_reason, now)
        stats.scheduler_stats = message.stats

    def _finish(self, timing: RequestTiming, reason: str, now: float | None) -> None:
        stats = self.pending
        stats.finished_reasons.append(reason)
        if reason != "abort" and now is not None:
            stats.e2e_latencies.append(now - timing.arrival_time)
            stats.prompt_lens.append(timing.num_prompt_tokens)
            stats.generation_lens.append(timing.num_generation_tokens)

    def finish_by_stop_string(self, request_ids: list[str], now: float) -> None:
        """Children the frontend finished (stop string) before the core did: counted as 'stop'."""
        for request_id in request_ids:
            timing = self.requests.pop(request_id, None)
            if timing is not None:
                self._finish(timing, "stop", now)

    def clear(self) -> None:
        self.requests.clear()

    def take(self) -> IterationStats:
        stats, self.pending = self.pending, IterationStats()
        return stats
