"""Under load: 200 concurrent streams all finish with the right text; a client that leaves (streaming or
not) has its request aborted, so num_requests_running drops back to 0."""

import asyncio
import time

from openai_server_utils import MODEL_NAME, httpx

PROMPTS = [f"def function_{i}(x):\n    return" for i in range(8)]
NUM_CLIENTS = 200


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_200_concurrent_streams(server, client):
    expected = [client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS]

    async def one(aclient, i):
        stream = await aclient.completions.create(model=MODEL_NAME, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=8,
                                                  temperature=0, stream=True, extra_body={"ignore_eos": True},
                                                  stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage:
                usage = chunk.usage
        return text, usage

    async def run_all():
        async with server.async_client() as aclient:
            return await asyncio.wait_for(asyncio.gather(*(one(aclient, i) for i in range(NUM_CLIENTS))), 300)

    results = asyncio.run(run_all())
    assert len(results) == NUM_CLIENTS
    for i, (text, usage) in enumerate(results):
        assert text == expected[i % len(PROMPTS)], i
        assert usage.completion_tokens == 8
    wait_for(lambda: server.metric("vllm:num_requests_running", model_name=MODEL_NAME) == 0, 10,
             "requests still running after every stream finished")


def _abort_count(server) -> float:
    return server.metric("vllm:request_success_total", model_name=MODEL_NAME, finished_reason="abort")


def test_disconnect_mid_stream_aborts(server):
    aborted = _abort_count(server)
    body = {"model": MODEL_NAME, "prompt": "import os", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers(), timeout=60) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        received = 0
        for line in lines:
            if line.startswith("data: {"):
                received += 1
            if received == 3:
                break
        assert server.metric("vllm:num_requests_running", model_name=MODEL_NAME) == 1
    # Leaving the block closed the connection mid-stream.
    wait_for(lambda: _abort_count(server) >= aborted + 1, 10, "the departed stream was not aborted")
    wait_for(lambda: server.metric("vllm:num_requests_running", model_name=MODEL_NAME) == 0, 10,
             "num_requests_running did not return to 0")
    assert server.metric("vllm:kv_cache_usage_perc", model_name=MODEL_NAME) == 0.0


def test_disconnect_while_waiting_for_a_full_response_aborts(server):
    aborted = _abort_count(server)
    body = {"model": MODEL_NAME, "prompt": "import sys", "max_tokens": 480, "ignore_eos": True}
    try:
        httpx.post(server.url + "/v1/completions", json=body, headers=server.headers(), timeout=0.3)
    except httpx.TimeoutException:
        pass
    wait_for(lambda: _abort_count(server) >= aborted + 1, 10, "the departed request was not aborted")
    wait_for(lambda: server.metric("vllm:num_requests_running", model_name=MODEL_NAME) == 0, 10,
             "num_requests_running did not return to 0")
