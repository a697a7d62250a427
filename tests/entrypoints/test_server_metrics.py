"""/metrics speaks vLLM: every family under vLLM V1's name, type, labels and buckets, moving as it should.

A server of its own (block size 32, so cache_config_info is seen to carry the real config), so the
counts below are exactly those of the requests sent here. /metrics is parsed with prometheus_client's
own text parser, as Prometheus would read it.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openai_server_utils import MAX_MODEL_LEN, MODEL_NAME

TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500]  # vLLM's 1-2-5 series up to max_model_len (512)
TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
        80.0, 160.0, 640.0, 2560.0]
ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
           960.0, 1920.0, 7680.0]
# family (as the parser names it) -> (type, extra label -> its values, buckets)
FAMILIES = {
    "vllm:num_requests_running": ("gauge", {}, None),
    "vllm:num_requests_waiting": ("gauge", {}, None),
    "vllm:num_requests_waiting_by_reason": ("gauge", {"reason": {"capacity", "deferred"}}, None),
    "vllm:kv_cache_usage_perc": ("gauge", {}, None),
    "vllm:prefix_cache_queries": ("counter", {}, None),
    "vllm:prefix_cache_hits": ("counter", {}, None),
    "vllm:num_preemptions": ("counter", {}, None),
    "vllm:prompt_tokens": ("counter", {}, None),
    "vllm:prompt_tokens_by_source": (
        "counter", {"source": {"local_compute", "local_cache_hit", "external_kv_transfer"}}, None),
    "vllm:prompt_tokens_cached": ("counter", {}, None),
    "vllm:generation_tokens": ("counter", {}, None),
    "vllm:request_success": (
        "counter", {"finished_reason": {"stop", "length", "abort", "error", "repetition"}}, None),
    "vllm:request_prompt_tokens": ("histogram", {}, TOKEN_BUCKETS),
    "vllm:request_generation_tokens": ("histogram", {}, TOKEN_BUCKETS),
    "vllm:iteration_tokens_total": ("histogram", {}, [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]),
    "vllm:request_max_num_generation_tokens": ("histogram", {}, TOKEN_BUCKETS),
    "vllm:request_params_n": ("histogram", {}, [1, 2, 5, 10, 20]),
    "vllm:request_params_max_tokens": ("histogram", {}, TOKEN_BUCKETS),
    "vllm:request_prefill_kv_computed_tokens": ("histogram", {}, TOKEN_BUCKETS),
    "vllm:time_to_first_token_seconds": ("histogram", {}, TTFT),
    "vllm:inter_token_latency_seconds": ("histogram", {}, ITL),
    "vllm:request_time_per_output_token_seconds": ("histogram", {}, ITL),
    "vllm:e2e_request_latency_seconds": ("histogram", {}, LATENCY),
    "vllm:request_queue_time_seconds": ("histogram", {}, LATENCY),
    "vllm:request_inference_time_seconds": ("histogram", {}, LATENCY),
    "vllm:request_prefill_time_seconds": ("histogram", {}, LATENCY),
    "vllm:request_decode_time_seconds": ("histogram", {}, LATENCY),
}
CACHE_INFO_LABELS = {"block_size", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization",
                     "kv_cache_memory_bytes", "num_gpu_blocks", "num_gpu_blocks_override", "swap_space", "engine"}
LABELS = {"model_name": MODEL_NAME, "engine": "0"}


@pytest.fixture(scope="module")
def metrics_server(start_server, model_dir):
    return start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len",
                         str(MAX_MODEL_LEN), "--block-size", "32", "--disable-uvicorn-access-log",
                         "--disable-log-requests"])


def scrape(server) -> dict:
    return {family.name: family for family in text_string_to_metric_families(server.get("/metrics").text)}


def value(families: dict, family: str, sample: str, **labels) -> float:
    """The sample `sample` of `family` with LABELS plus `labels` (0.0 when the family has none such)."""
    wanted = {**LABELS, **labels}
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in wanted.items()):
            return s.value
    return 0.0


def hist(families: dict, family: str, part: str) -> float:
    return value(families, family, f"{family}_{part}")


def wait_idle(server, before: dict, finished: int) -> dict:
    """Scrape until `finished` more engine requests have finished (stop or length) and nothing runs."""
    deadline = time.monotonic() + 30
    while True:
        now = scrape(server)
        done = sum(value(now, "vllm:request_success", "vllm:request_success_total", finished_reason=r)
                   - value(before, "vllm:request_success", "vllm:request_success_total", finished_reason=r)
                   for r in ("stop", "length"))
        if done >= finished and value(now, "vllm:num_requests_running", "vllm:num_requests_running") == 0:
            return now
        assert time.monotonic() < deadline, f"only {done} of {finished} requests finished"
        time.sleep(0.1)


def test_every_family_has_vllms_name_type_labels_and_buckets(metrics_server):
    # One request first: until api_server hands the cache config to the logger at start-up, the info
    # metric appears with the first engine message.
    metrics_server.client().completions.create(model=MODEL_NAME, prompt="import os", max_tokens=2)
    families = scrape(metrics_server)
    # each vLLM family is exported once, as vllm:*; only Pagoda's own engine-health metrics are pagoda:*
    assert {name for name in families if name.startswith("pagoda:")} == {"pagoda:engine_healthy",
                                                                          "pagoda:engine_restarts"}
    for name, (kind, extra, buckets) in FAMILIES.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        assert family.documentation, name
        for sample in family.samples:
            expected = {"model_name", "engine", *extra, *(["le"] if sample.name.endswith("_bucket") else [])}
            assert set(sample.labels) == expected, (sample.name, sample.labels)
            assert sample.labels["model_name"] == MODEL_NAME and sample.labels["engine"] == "0"
        for label, label_values in extra.items():
            assert {s.labels[label] for s in family.samples} == label_values, name
        if buckets is not None:
            les = [s.labels["le"] for s in family.samples if s.name == f"{name}_bucket"]
            assert les == [str(float(b)) for b in buckets] + ["+Inf"], name
    info = families["vllm:cache_config_info"]
    assert info.type == "gauge" and len(info.samples) == 1
    sample = info.samples[0]
    assert set(sample.labels) == CACHE_INFO_LABELS and sample.value == 1.0  # no model_name, as vLLM
    assert sample.labels["block_size"] == "32" and sample.labels["engine"] == "0"
    assert sample.labels["enable_prefix_caching"] == "True" and int(sample.labels["num_gpu_blocks"]) > 0


def test_values_move_with_requests(metrics_server):
    client = metrics_server.client()
    before = scrape(metrics_server)
    client.completions.create(model=MODEL_NAME, prompt="def main():", max_tokens=6, n=2,
                              extra_body={"ignore_eos": True})
    client.completions.create(model=MODEL_NAME, prompt="for i in range(3):", max_tokens=4,
                              extra_body={"ignore_eos": True})
    after = wait_idle(metrics_server, before, finished=3)

    def delta(family: str, part: str) -> float:
        return hist(after, family, part) - hist(before, family, part)

    def counter(family: str, **labels) -> float:
        return value(after, family, f"{family}_total", **labels) - value(before, family, f"{family}_total", **labels)

    assert counter("vllm:request_success", finished_reason="length") == 3
    assert counter("vllm:generation_tokens") == 6 + 6 + 4
    # n and the longest output are per user request; max_tokens per engine request.
    assert delta("vllm:request_params_n", "count") == 2 and delta("vllm:request_params_n", "sum") == 3
    assert value(after, "vllm:request_params_n", "vllm:request_params_n_bucket", le="1.0") \
        - value(before, "vllm:request_params_n", "vllm:request_params_n_bucket", le="1.0") == 1
    assert delta("vllm:request_max_num_generation_tokens", "count") == 2
    assert delta("vllm:request_max_num_generation_tokens", "sum") == 6 + 4
    assert delta("vllm:request_params_max_tokens", "count") == 3
    assert delta("vllm:request_params_max_tokens", "sum") == 6 + 6 + 4
    assert delta("vllm:request_generation_tokens", "sum") == 6 + 6 + 4
    # Prompt tokens: every one is either computed or a prefix-cache hit.
    prompt = counter("vllm:prompt_tokens")
    computed = counter("vllm:prompt_tokens_by_source", source="local_compute")
    cached = counter("vllm:prompt_tokens_by_source", source="local_cache_hit")
    assert prompt == delta("vllm:request_prompt_tokens", "sum") > 0
    assert computed + cached == prompt and cached == counter("vllm:prompt_tokens_cached")
    assert counter("vllm:prompt_tokens_by_source", source="external_kv_transfer") == 0
    assert delta("vllm:request_prefill_kv_computed_tokens", "sum") == computed
    # Each engine step's tokens: every computed prompt token, and every output token but each request's last.
    assert delta("vllm:iteration_tokens_total", "count") >= 4
    assert delta("vllm:iteration_tokens_total", "sum") == computed + (6 + 6 + 4) - 3
    # One observation per finished engine request, intervals consistent with each other.
    for family in ("e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
                   "request_decode_time_seconds", "request_inference_time_seconds",
                   "request_time_per_output_token_seconds", "time_to_first_token_seconds"):
        assert delta(f"vllm:{family}", "count") == 3, family
        assert delta(f"vllm:{family}", "sum") >= 0, family
    prefill = delta("vllm:request_prefill_time_seconds", "sum")
    decode = delta("vllm:request_decode_time_seconds", "sum")
    inference = delta("vllm:request_inference_time_seconds", "sum")
    assert inference >= decode and inference == pytest.approx(prefill + decode)
    assert delta("vllm:e2e_request_latency_seconds", "sum") >= inference
    assert delta("vllm:inter_token_latency_seconds", "count") == (6 - 1) * 2 + (4 - 1)
    # Idle again: gauges back to zero, waiting reasons sum to the waiting count.
    assert value(after, "vllm:num_requests_waiting", "vllm:num_requests_waiting") == 0
    for reason in ("capacity", "deferred"):
        assert value(after, "vllm:num_requests_waiting_by_reason", "vllm:num_requests_waiting_by_reason",
                     reason=reason) == 0
    assert value(after, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc") == 0.0
    assert counter("vllm:prefix_cache_queries") >= prompt and counter("vllm:prefix_cache_hits") >= cached


def test_aborted_request_counts_as_abort_only(metrics_server):
    client = metrics_server.client()
    before = scrape(metrics_server)
    stream = client.completions.create(model=MODEL_NAME, prompt="while True:", max_tokens=400, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()  # the client leaves: the server aborts the request
    deadline = time.monotonic() + 30
    while True:
        after = scrape(metrics_server)
        aborted = value(after, "vllm:request_success", "vllm:request_success_total", finished_reason="abort") \
            - value(before, "vllm:request_success", "vllm:request_success_total", finished_reason="abort")
        if aborted >= 1 and value(after, "vllm:num_requests_running", "vllm:num_requests_running") == 0:
            break
        assert time.monotonic() < deadline, "the abort was not counted"
        time.sleep(0.1)
    assert aborted == 1
    for family in ("vllm:e2e_request_latency_seconds", "vllm:request_params_n", "vllm:request_params_max_tokens"):
        assert hist(after, family, "count") == hist(before, family, "count"), family  # as vLLM: finished only
    assert hist(after, "vllm:time_to_first_token_seconds", "count") \
        == hist(before, "vllm:time_to_first_token_seconds", "count") + 1
