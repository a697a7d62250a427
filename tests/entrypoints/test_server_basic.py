"""Models, health, version, metrics, tokenize/detokenize, API key, request ids, body limit, CORS, docs."""

import time

import openai
import pytest

from openai_server_utils import API_KEY, MAX_MODEL_LEN, MODEL_NAME, httpx


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME, "alias-name"]
    assert models.data[0].owned_by == "pagoda"
    assert models.data[0].model_extra["max_model_len"] == MAX_MODEL_LEN


def test_every_served_name_is_accepted(client):
    out = client.completions.create(model="alias-name", prompt="import os", max_tokens=2, temperature=0)
    assert out.model == MODEL_NAME  # responses carry the first name, as vLLM's do


def test_open_endpoints_need_no_key(server):
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    version = httpx.get(server.url + "/version", timeout=10)
    assert version.status_code == 200 and version.json()["version"]
    metrics = httpx.get(server.url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "vllm:num_requests_running" in metrics.text


def test_every_other_endpoint_needs_the_key(server):
    bad = server.client(api_key="wrong-key")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=1)
    for method, path in (("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/docs"), ("POST", "/v1/embeddings"),
                         ("GET", "/v1/models")):
        response = httpx.request(method, server.url + path, json={}, timeout=10)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == 401
    ok = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert ok.status_code == 200


def test_tokenize_detokenize_round_trip(server):
    text = "def main():\n    return os.path.join(a, b)"
    plain = server.post("/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert plain["count"] == len(plain["tokens"]) > 3 and plain["max_model_len"] == MAX_MODEL_LEN
    assert server.post("/detokenize", {"tokens": plain["tokens"]}).json()["prompt"] == text
    with_bos = server.post("/tokenize", {"prompt": text, "return_token_strs": True}).json()
    assert with_bos["tokens"][1:] == plain["tokens"] and len(with_bos["token_strs"]) == with_bos["count"]


def test_tokenize_counts_what_the_endpoints_use(server, client):
    out = client.completions.create(model=MODEL_NAME, prompt="import sys", max_tokens=1)
    assert server.post("/tokenize", {"prompt": "import sys"}).json()["count"] == out.usage.prompt_tokens
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    chat = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1)
    assert server.post("/tokenize", {"messages": messages}).json()["count"] == chat.usage.prompt_tokens


def test_request_id_header_is_echoed(server):
    response = server.post("/v1/completions", {"prompt": "x = 1", "max_tokens": 2}, headers={"X-Request-Id": "abc-42"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-42"
    assert response.json()["id"] == "cmpl-abc-42"
    generated = server.post("/v1/completions", {"prompt": "x = 1", "max_tokens": 1})
    assert len(generated.headers["x-request-id"]) >= 16


def test_response_fields(client):
    before = int(time.time())
    out = client.completions.create(model=MODEL_NAME, prompt="class Foo:", max_tokens=3)
    assert out.id.startswith("cmpl-") and out.object == "text_completion"
    assert before - 1 <= out.created <= time.time() + 1
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # --enable-prompt-tokens-details, but a prompt under one KV block is never cached: no details (vLLM)
    assert out.usage.prompt_tokens_details is None


def test_cached_prompt_tokens_are_reported(client):
    prompt = "import os\nimport sys\n" * 8  # several full KV blocks
    client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1)
    again = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1)
    assert again.usage.prompt_tokens_details.cached_tokens >= 16


def test_metrics_after_requests(server, client):
    gen_before = server.metric("vllm:generation_tokens_total", model_name=MODEL_NAME)
    ok_before = server.metric("vllm:request_success_total", model_name=MODEL_NAME, finished_reason="length")
    client.completions.create(model=MODEL_NAME, prompt="for i in range(3):", max_tokens=5, extra_body={"ignore_eos": True})
    deadline = time.monotonic() + 10
    while server.metric("vllm:generation_tokens_total", model_name=MODEL_NAME) < gen_before + 5:
        assert time.monotonic() < deadline, "generation_tokens_total did not grow"
        time.sleep(0.1)
    assert server.metric("vllm:request_success_total", model_name=MODEL_NAME, finished_reason="length") >= ok_before + 1
    text = server.get("/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
                 "prefix_cache_hits_total", "prompt_tokens_total", "generation_tokens_total", "num_preemptions_total",
                 "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
                 "e2e_request_latency_seconds_bucket", "request_queue_time_seconds_bucket"):
        assert f"vllm:{name}{{" in text, name
    assert server.metric("vllm:time_to_first_token_seconds_count", model_name=MODEL_NAME) >= 1
    assert server.metric("vllm:request_queue_time_seconds_count", model_name=MODEL_NAME) >= 1


def test_periodic_stats_log_line(server, client):
    client.completions.create(model=MODEL_NAME, prompt="while True:", max_tokens=4)
    deadline = time.monotonic() + 15
    while "Avg generation throughput" not in server.log():
        assert time.monotonic() < deadline, "no periodic stats line in the log"
        time.sleep(0.2)
    assert "Running:" in server.log() and "KV cache usage" in server.log()


def test_body_size_limit(server):
    response = server.post("/v1/completions", {"prompt": "x" * (2 * 1024 * 1024), "max_tokens": 1})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


def test_cors_preflight(server):
    response = httpx.options(server.url + "/v1/completions", timeout=10, headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "POST"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "http://example.com")


def test_openapi_docs(server):
    assert server.get("/docs").status_code == 200
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize"} <= set(paths)


def test_api_server_freezes_its_start_up_heap(server):
    """As vLLM's API server: once ready, the start-up heap is out of every later garbage-collector pass (a full
    pass over it paused the event loop 168-197 ms on the CPU machine)."""
    import re

    match = re.search(r"API server: froze (\d+) start-up objects out of garbage-collector passes", server.log())
    assert match and int(match.group(1)) > 10_000, server.log()[-2000:]
