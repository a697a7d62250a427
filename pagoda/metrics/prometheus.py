"""Prometheus metrics under vLLM V1's own names, labels and buckets, so vLLM dashboards work as they are.

Every family is exported once, under the name vLLM's `vllm/v1/metrics/loggers.py` gives it
(`vllm:*`; counters gain `_total` when rendered), labelled `model_name` (the first served name) and
`engine` ("0": Pagoda runs one engine core per server), with vLLM's bucket boundaries. Metrics only
Pagoda has are named `pagoda:*`: `pagoda:engine_healthy` (1 while the engine core is READY and
healthy, 0 from its death or unhealthy verdict until a restarted core is READY) and
`pagoda:engine_restarts_total` (engine-core restarts attempted). `vllm:cache_config_info` is vLLM's
info-style gauge: always 1, the cache config in its labels (vLLM's field names) plus `engine`.

Speculative decoding (vLLM's `SpecDecodingProm`): `vllm:spec_decode_num_drafts`,
`vllm:spec_decode_num_draft_tokens`, `vllm:spec_decode_num_accepted_tokens` and
`vllm:spec_decode_num_accepted_tokens_per_pos` (one more label, `position`: "0" .. "k-1") exist only
when speculative decoding is configured, as in vLLM: they are created on the first scheduler stats that
carry the core's cumulative `spec_decode_*` keys, every position at 0 until it happens. Acceptance rate
= rate(accepted) / rate(draft tokens); mean acceptance length = 1 + rate(accepted) / rate(drafts).

Invariants:
- Every collector lives in this logger's own CollectorRegistry (so several servers or tests in one
  process never collide); `/metrics` renders exactly that registry.
- Counters only ever grow: cumulative engine counters (prefix-cache queries/hits, preemptions,
  speculative-decoding drafts/tokens) are applied as the difference from the last value seen.
- `vllm:kv_cache_usage_perc` is a fraction in [0, 1], as vLLM's is despite the name.
- `vllm:num_requests_waiting_by_reason` sums to `vllm:num_requests_waiting`. Pagoda's scheduler holds
  a waiting request back only for capacity (token budget, sequence slots, KV blocks), so `deferred`
  (vLLM: LoRA budget, KV transfer, grammar compilation) stays 0.
- Every labelled series vLLM pre-creates (each finished_reason, waiting reason, prompt-token
  source) exists from start-up, at 0 until it happens.
- When the engine is down the scheduler gauges (running, waiting, KV usage) read 0, never the dead
  core's last values; when a restarted core starts, its cumulative counters start from 0 again and are
  applied as growth from there (the last values seen are forgotten at each restart).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from pagoda.metrics.stats import IterationStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
# vLLM's FinishReason values; Pagoda's engine produces stop, length and abort.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
WAITING_REASONS = ("capacity", "deferred")
PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0]
_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                    240.0, 480.0, 960.0, 1920.0, 7680.0]
_ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
_N_BUCKETS = [1, 2, 5, 10, 20]
# The core's cumulative speculative-decoding counters: scheduler-stats key (the vLLM name less `vllm:`) -> help.
SPEC_DECODE_COUNTERS = {
    "spec_decode_num_drafts": "Number of spec decoding drafts.",
    "spec_decode_num_draft_tokens": "Number of draft tokens.",
    "spec_decode_num_accepted_tokens": "Number of accepted tokens.",
}
SPEC_DECODE_PER_POS = "spec_decode_num_accepted_tokens_per_pos"
# vllm:cache_config_info label -> Pagoda CacheConfig attribute (None: a constant, see _cache_info).
_CACHE_INFO_FIELDS = {
    "block_size": "block_size", "cache_dtype": None, "enable_prefix_caching": "enable_prefix_caching",
    "gpu_memory_utilization": "gpu_memory_utilization", "kv_cache_memory_bytes": "kv_cache_memory_bytes",
    "num_gpu_blocks": "num_blocks", "num_gpu_blocks_override": "num_gpu_blocks_override",
    "swap_space": "swap_space_gib",
}


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
    def __init__(self, model_name: str, max_model_len: int, cache_config: Any = None, engine_index: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.engine = str(engine_index)
        reg, labels, values = self.registry, ["model_name", "engine"], (model_name, self.engine)
        self._last: dict[str, int] = {}
        self._cache_info: Gauge | None = None
        self._labels, self._label_values = labels, values
        self.spec_decode: dict[str, Counter] | None = None  # created with the first spec-decoding stats
        self._spec_per_pos_family: Counter | None = None
        self.spec_decode_per_pos: list[Counter] = []

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"vllm:{name}", doc, labels, registry=reg).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"vllm:{name}", doc, labels, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets: list) -> Histogram:
            return Histogram(f"vllm:{name}", doc, labels, buckets=buckets, registry=reg).labels(*values)

        def by(kind: type, name: str, doc: str, label: str, keys: tuple[str, ...]) -> dict:
            family = kind(f"vllm:{name}", doc, labels + [label], registry=reg)
            return {key: family.labels(*values, key) for key in keys}

        # Scheduler state, refreshed after every engine step or abort.
        self.num_running = gauge("num_requests_running", "Requests in the running batch (scheduled each step).")
        self.num_waiting = gauge("num_requests_waiting", "Requests queued for admission, not yet running.")
        self.waiting_by_reason = by(Gauge, "num_requests_waiting_by_reason",
                                    "Waiting requests by why they wait: 'capacity' = no room yet (tokens, slots, KV "
                                    "blocks); 'deferred' = held back by a transient constraint. Sums to "
                                    "vllm:num_requests_waiting.", "reason", WAITING_REASONS)
        self.kv_cache_usage = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).")
        self.prefix_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.preemptions = counter("num_preemptions", "Requests preempted by the engine, cumulative.")
        # Tokens.
        self.prompt_tokens = counter("prompt_tokens", "Prompt (prefill) tokens processed.")
        self.prompt_tokens_by_source = by(Counter, "prompt_tokens_by_source",
                                          "Prompt tokens by where their KV came from.", "source", PROMPT_TOKEN_SOURCES)
        self.prompt_tokens_cached = counter("prompt_tokens_cached", "Prompt tokens whose KV was cached (not computed).")
        self.generation_tokens = counter("generation_tokens", "Generated (decode) tokens produced.")
        self.request_success = by(Counter, "request_success", "Finished requests, by finish reason.",
                                  "finished_reason", FINISH_REASONS)
        # Histograms of counts.
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Prompt tokens per finished request.",
                                               token_buckets)
        self.request_generation_tokens = histogram("request_generation_tokens",
                                                   "Generated tokens per finished request.", token_buckets)
        self.iteration_tokens = histogram("iteration_tokens_total", "Tokens computed per engine step.",
                                          _ITERATION_TOKEN_BUCKETS)
        self.max_num_generation_tokens = histogram("request_max_num_generation_tokens",
                                                   "Largest generated length among a request's n sequences.",
                                                   token_buckets)
        self.params_n = histogram("request_params_n", "The n parameter of finished requests.", _N_BUCKETS)
        self.params_max_tokens = histogram("request_params_max_tokens",
                                           "The max_tokens parameter of finished requests.", token_buckets)
        self.prefill_kv_computed = histogram("request_prefill_kv_computed_tokens",
                                             "Prompt tokens a request computed in prefill (cached ones excluded).",
                                             token_buckets)
        # Histograms of intervals.
        self.ttft = histogram("time_to_first_token_seconds", "Seconds from arrival to the first token.", _TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Seconds between consecutive output tokens.", _ITL_BUCKETS)
        self.request_tpot = histogram("request_time_per_output_token_seconds",
                                      "Per request: decode seconds per output token after the first.", _ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Seconds from arrival to finish.", _LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Seconds a request waited before first scheduled.",
                                    _LATENCY_BUCKETS)
        self.inference_time = histogram("request_inference_time_seconds",
                                        "Seconds from first scheduled to the last token (running).", _LATENCY_BUCKETS)
        self.prefill_time = histogram("request_prefill_time_seconds",
                                      "Seconds from first scheduled to the first token (prefill).", _LATENCY_BUCKETS)
        self.decode_time = histogram("request_decode_time_seconds",
                                     "Seconds from the first to the last token (decode).", _LATENCY_BUCKETS)
        self._add_engine_health(labels, values)
        if cache_config is not None:
            self.set_cache_config(cache_config)

    def _add_engine_health(self, labels: list[str], values: tuple[str, str]) -> None:
        """Pagoda only: the engine core's health and self-healing."""
        self.engine_healthy = Gauge("pagoda:engine_healthy", "1 while the engine core is ready and healthy, 0 while "
                                    "it is dead, unhealthy or restarting.", labels,
                                    registry=self.registry).labels(*values)
        self.engine_healthy.set(1)
        self.engine_restarts = Counter("pagoda:engine_restarts", "Engine-core restarts attempted after the core died "
                                       "or was declared unhealthy.", labels, registry=self.registry).labels(*values)
        self._restarts_seen = 0

    def set_cache_config(self, cache_config: Any) -> None:
        """Export `vllm:cache_config_info` (once; later calls change nothing)."""
        if self._cache_info is not None:
            return
        info = {name: str(getattr(cache_config, attr) if attr else "auto") for name, attr in _CACHE_INFO_FIELDS.items()}
        info["engine"] = self.engine
        self._cache_info = Gauge("vllm:cache_config_info", "The engine's KV-cache configuration, in the labels.",
                                 list(info), registry=self.registry)
        self._cache_info.labels(**info).set(1)

    def record(self, stats: IterationStats) -> None:
        if self._cache_info is None and stats.cache_config is not None:
            self.set_cache_config(stats.cache_config)
        if stats.engine_healthy is not None:
            self._record_health(stats)
        sched = stats.scheduler_stats
        if sched is not None:
            waiting, deferred = sched.get("num_waiting", 0), sched.get("num_waiting_deferred", 0)
            self.num_running.set(sched.get("num_running", 0))
            self.num_waiting.set(waiting)
            self.waiting_by_reason["capacity"].set(waiting - deferred)
            self.waiting_by_reason["deferred"].set(deferred)
            self.kv_cache_usage.set(sched.get("kv_cache_usage", 0.0))
            self._grow(self.prefix_queries, "prefix_cache_queries", sched)
            self._grow(self.prefix_hits, "prefix_cache_hits", sched)
            self._grow(self.preemptions, "num_preemptions", sched)
            if "spec_decode_num_drafts" in sched:
                self._record_spec_decode(sched)
        self._record_tokens(stats)
        for reason in stats.finished_reasons:
            counter = self.request_success.get(reason)
            if counter is not None:
                counter.inc()
        for histogram, values in ((self.ttft, stats.time_to_first_tokens), (self.itl, stats.inter_token_latencies),
                                  (self.params_n, stats.n_params),
                                  (self.max_num_generation_tokens, stats.max_num_generation_tokens)):
            for value in values:
                histogram.observe(value)
        for r in stats.finished_requests:
            self.e2e.observe(r.e2e_latency)
            self.queue_time.observe(r.queue_time)
            self.prefill_time.observe(r.prefill_time)
            self.decode_time.observe(r.decode_time)
            self.inference_time.observe(r.inference_time)
            self.request_tpot.observe(r.time_per_output_token)
            self.request_prompt_tokens.observe(r.num_prompt_tokens)
            self.request_generation_tokens.observe(r.num_generation_tokens)
            self.prefill_kv_computed.observe(max(0, r.num_prompt_tokens - r.num_cached_tokens))
            if r.max_tokens:
                self.params_max_tokens.observe(r.max_tokens)

    def _record_health(self, stats: IterationStats) -> None:
        self.engine_healthy.set(1 if stats.engine_healthy else 0)
        restarts = stats.engine_restarts or 0
        if restarts > self._restarts_seen:
            self.engine_restarts.inc(restarts - self._restarts_seen)
            self._restarts_seen = restarts
            self._last = {}  # a new core: its cumulative counters start from 0

    def _record_tokens(self, stats: IterationStats) -> None:
        if stats.num_prompt_tokens:
            cached = stats.num_cached_prompt_tokens
            self.prompt_tokens.inc(stats.num_prompt_tokens)
            self.prompt_tokens_by_source["local_compute"].inc(stats.num_prompt_tokens - cached)
            if cached:
                self.prompt_tokens_by_source["local_cache_hit"].inc(cached)
                self.prompt_tokens_cached.inc(cached)
        if stats.num_generation_tokens:
            self.generation_tokens.inc(stats.num_generation_tokens)
        if stats.num_scheduled_tokens:
            self.iteration_tokens.observe(stats.num_scheduled_tokens)

    def _record_spec_decode(self, sched: dict) -> None:
        """vLLM's spec-decoding counters, created on the first stats that carry them."""
        if self.spec_decode is None:
            labels, values = self._labels, self._label_values
            self.spec_decode = {key: Counter(f"vllm:{key}", doc, labels, registry=self.registry).labels(*values)
                                for key, doc in SPEC_DECODE_COUNTERS.items()}
            self._spec_per_pos_family = Counter(f"vllm:{SPEC_DECODE_PER_POS}", "Accepted tokens per draft position.",
                                                labels + ["position"], registry=self.registry)
        for key, counter in self.spec_decode.items():
            self._grow(counter, key, sched)
        per_pos = sched.get(SPEC_DECODE_PER_POS) or ()
        while len(self.spec_decode_per_pos) < len(per_pos):  # every position exists from the start, at 0
            position = str(len(self.spec_decode_per_pos))
            self.spec_decode_per_pos.append(self._spec_per_pos_family.labels(*self._label_values, position))
        for position, value in enumerate(per_pos):
            self._grow_to(self.spec_decode_per_pos[position], f"{SPEC_DECODE_PER_POS}:{position}", value)

    def _grow(self, counter: Counter, key: str, sched: dict) -> None:
        self._grow_to(counter, key, sched.get(key, 0))

    def _grow_to(self, counter: Counter, key: str, value: int) -> None:
        value = int(value)
        last = self._last.get(key, 0)
        if value > last:
            counter.inc(value - last)
        self._last[key] = max(value, last)

    def render(self) -> bytes:
        return generate_latest(self.registry)
