"""The periodic log lines with throughput, running/waiting requests and cache usage, as vLLM prints them.

Invariants:
- `record()` only accumulates; `log()` prints one line covering everything recorded since the last
  `log()` and resets the accumulators. An idle interval (nothing recorded, nothing running) logs at
  DEBUG, so an idle server's log stays quiet.
- With speculative decoding (the scheduler stats carry the core's cumulative `spec_decode_*`
  counters), a second line follows at the same level whenever drafts were verified in the interval:
  vLLM's SpecDecodingLogging line, over the interval's growth of those counters. Growth is taken at
  each `record()` against the previous stats, and from 0 again after an engine-core restart (a new
  core's counters start from 0), so an interval never counts a dead core's totals twice.
  Mean acceptance length = 1 + accepted / drafts (the bonus token counted, as vLLM); per-position
  acceptance rate = accepted at that draft position / drafts; avg draft acceptance rate =
  accepted / draft tokens.
"""

from __future__ import annotations

import logging
import time

from pagoda.metrics.stats import IterationStats

logger = logging.getLogger("pagoda.metrics")

_SPEC_KEYS = ("spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens")
_SPEC_PER_POS = "spec_decode_num_accepted_tokens_per_pos"


class SpecDecodeInterval:
    """Speculative-decoding counts over one log interval, from the core's cumulative counters."""

    def __init__(self) -> None:
        # The counters last seen: ([drafts, draft tokens, accepted], accepted per position); None: all 0.
        self._last: tuple[list[int], list[int]] | None = None
        self.reset()

    def reset(self) -> None:
        self.num_drafts = self.num_draft_tokens = self.num_accepted_tokens = 0
        self.accepted_per_pos: list[int] = []

    def forget(self) -> None:
        """A new engine core: its counters start again from 0."""
        self._last = None

    def observe(self, sched: dict) -> None:
        totals = [int(sched.get(key, 0)) for key in _SPEC_KEYS]
        per_pos = [int(v) for v in sched.get(_SPEC_PER_POS) or ()]
        last_totals, last_per_pos = self._last if self._last is not None else ([0, 0, 0], [])
        if totals[0] < last_totals[0]:  # counters went back: a new core, counting from 0
            last_totals, last_per_pos = [0, 0, 0], []
        self._last = (totals, per_pos)
        d_drafts, d_tokens, d_accepted = (max(0, now - before) for now, before in zip(totals, last_totals))
        self.num_drafts += d_drafts
        self.num_draft_tokens += d_tokens
        self.num_accepted_tokens += d_accepted
        if len(self.accepted_per_pos) < len(per_pos):
            self.accepted_per_pos += [0] * (len(per_pos) - len(self.accepted_per_pos))
        for position, value in enumerate(per_pos):
            before = last_per_pos[position] if position < len(last_per_pos) else 0
            self.accepted_per_pos[position] += max(0, value - before)

    def line(self, elapsed: float) -> str | None:
        """vLLM's SpecDecoding line for this interval; None when no draft was verified in it."""
        drafts, drafted, accepted = self.num_drafts, self.num_draft_tokens, self.num_accepted_tokens
        if drafts <= 0:
            return None
        rate = 100.0 * accepted / drafted if drafted > 0 else float("nan")
        per_pos = ", ".join(f"{n / drafts:.3f}" for n in self.accepted_per_pos)
        return (
            f"SpecDecoding metrics: Mean acceptance length: {1 + accepted / drafts:.2f}, "
            f"Accepted throughput: {accepted / elapsed:.2f} tokens/s, "
            f"Drafted throughput: {drafted / elapsed:.2f} tokens/s, "
            f"Accepted: {accepted} tokens, Drafted: {drafted} tokens, "
            f"Per-position acceptance rate: {per_pos}, "
            f"Avg Draft acceptance rate: {rate:.1f}%"
        )


class LoggingStatLogger:
    def __init__(self) -> None:
        self.last_log_time = time.monotonic()
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.sched: dict = {}
        self.prefix_queries = self.prefix_hits = 0
        self._last_prefix = (0, 0)
        self.spec_decode = SpecDecodeInterval()
        self.last_spec_line: str | None = None  # the SpecDecoding line of the last log(), if it made one
        self._restarts_seen = 0

    def record(self, stats: IterationStats) -> None:
        self.num_prompt_tokens += stats.num_prompt_tokens
        self.num_generation_tokens += stats.num_generation_tokens
        if stats.engine_restarts is not None and stats.engine_restarts > self._restarts_seen:
            self._restarts_seen = stats.engine_restarts
            self.spec_decode.forget()
        if stats.scheduler_stats is not None:
            self.sched = stats.scheduler_stats
            if "spec_decode_num_drafts" in self.sched:
                self.spec_decode.observe(self.sched)

    def log(self) -> str:
        """Log the interval's line (and the SpecDecoding line, when drafts were verified); returns the first."""
        now = time.monotonic()
        elapsed = max(now - self.last_log_time, 1e-9)
        sched = self.sched
        queries, hits = int(sched.get("prefix_cache_queries", 0)), int(sched.get("prefix_cache_hits", 0))
        d_queries, d_hits = queries - self._last_prefix[0], hits - self._last_prefix[1]
        hit_rate = 100.0 * d_hits / d_queries if d_queries > 0 else 0.0
        line = (
            f"Avg prompt throughput: {self.num_prompt_tokens / elapsed:.1f} tokens/s, "
            f"Avg generation throughput: {self.num_generation_tokens / elapsed:.1f} tokens/s, "
            f"Running: {sched.get('num_running', 0)} reqs, Waiting: {sched.get('num_waiting', 0)} reqs, "
            f"KV cache usage: {100.0 * sched.get('kv_cache_usage', 0.0):.1f}%, "
            f"Prefix cache hit rate: {hit_rate:.1f}%"
        )
        idle = not (self.num_prompt_tokens or self.num_generation_tokens or sched.get("num_running")
                    or sched.get("num_waiting"))
        log_fn = logger.debug if idle else logger.info
        log_fn(line)
        self.last_spec_line = self.spec_decode.line(elapsed)
        if self.last_spec_line is not None:
            log_fn(self.last_spec_line)
        self.spec_decode.reset()
        self.last_log_time = now
        self.num_prompt_tokens = self.num_generation_tokens = 0
        self._last_prefix = (queries, hits)
        return line
