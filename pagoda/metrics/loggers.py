"""The periodic log line with throughput, running/waiting requests and cache usage, as vLLM prints it.

Invariants:
- `record()` only accumulates; `log()` prints one line covering everything recorded since the last
  `log()` and resets the accumulators. An idle interval (nothing recorded, nothing running) logs at
  DEBUG, so an idle server's log stays quiet.
"""

from __future__ import annotations

import logging
import time

from pagoda.metrics.stats import IterationStats

logger = logging.getLogger("pagoda.metrics")


class LoggingStatLogger:
    def __init__(self) -> None:
        self.last_log_time = time.monotonic()
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.sched: dict = {}
        self.prefix_queries = self.prefix_hits = 0
        self._last_prefix = (0, 0)

    def record(self, stats: IterationStats) -> None:
        self.num_prompt_tokens += stats.num_prompt_tokens
        self.num_generation_tokens += stats.num_generation_tokens
        if stats.scheduler_stats is not None:
            self.sched = stats.scheduler_stats

    def log(self) -> str:
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
        (logger.debug if idle else logger.info)(line)
        self.last_log_time = now
        self.num_prompt_tokens = self.num_generation_tokens = 0
        self._last_prefix = (queries, hits)
        return line
