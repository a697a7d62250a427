"""Prometheus metrics with vLLM's names under the `pagoda:` prefix, labelled by `model_name`.

Invariants:
- Every collector lives in this logger's own CollectorRegistry (so several servers or tests in one
  process never collide); `/metrics` renders exactly that registry.
- Counters only ever grow: cumulative engine counters (prefix-cache queries/hits, preemptions) are
  applied as the difference from the last value seen.
- `pagoda:kv_cache_usage_perc` is a fraction in [0, 1], as vLLM's is despite the name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from pagoda.metrics.stats import IterationStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
FINISH_REASONS = ("stop", "length", "abort")
_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0]
_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                    240.0, 480.0, 960.0, 1920.0, 7680.0]


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's token-count buckets)."""
    buckets, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class PrometheusStatLogger:
    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, labels = self.registry, ["model_name"]
        self._last: dict[str, int] = {}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"pagoda:{name}", doc, labels, registry=reg).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"pagoda:{name}", doc, labels, registry=reg).labels(model_name)

        def histogram(name: str, doc: str, buckets: list) -> Histogram:
            return Histogram(f"pagoda:{name}", doc, labels, buckets=buckets, registry=reg).labels(model_name)

        self.num_running = gauge("num_requests_running", "Number of requests in model execution batches.")
        self.num_waiting = gauge("num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_cache_usage = gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_queries = counter("prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = counter("prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        self.preemptions = counter("num_preemptions", "Cumulative number of preemptions from the engine.")
        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Number of generation tokens processed.")
        success = Counter("pagoda:request_success", "Count of successfully processed requests.",
                          ["model_name", "finished_reason"], registry=reg)
        self.request_success = {reason: success.labels(model_name, reason) for reason in FINISH_REASONS}
        self.ttft = histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.", _TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", _ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", _LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                                    _LATENCY_BUCKETS)
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Number of prefill tokens processed.", token_buckets)
        self.request_generation_tokens = histogram("request_generation_tokens", "Number of generation tokens processed.",
                                                   token_buckets)

    def record(self, stats: IterationStats) -> None:
        sched = stats.scheduler_stats
        if sched is not None:
            self.num_running.set(sched.get("num_running", 0))
            self.num_waiting.set(sched.get("num_waiting", 0))
            self.kv_cache_usage.set(sched.get("kv_cache_usage", 0.0))
            self._grow(self.prefix_queries, "prefix_cache_queries", sched)
            self._grow(self.prefix_hits, "prefix_cache_hits", sched)
            self._grow(self.preemptions, "num_preemptions", sched)
        if stats.num_prompt_tokens:
            self.prompt_tokens.inc(stats.num_prompt_tokens)
        if stats.num_generation_tokens:
            self.generation_tokens.inc(stats.num_generation_tokens)
        for reason in stats.finished_reasons:
            counter = self.request_success.get(reason)
            if counter is not None:
                counter.inc()
        for histogram, values in ((self.ttft, stats.time_to_first_tokens), (self.itl, stats.inter_token_latencies),
                                  (self.e2e, stats.e2e_latencies), (self.queue_time, stats.queue_times),
                                  (self.request_prompt_tokens, stats.prompt_lens),
                                  (self.request_generation_tokens, stats.generation_lens)):
            for value in values:
                histogram.observe(value)

    def _grow(self, counter: Counter, key: str, sched: dict) -> None:
        value = int(sched.get(key, 0))
        delta = value - self._last.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        self._last[key] = max(value, self._last.get(key, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
