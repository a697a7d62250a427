"""A bounded queue answers 503 + Retry-After; killing the engine-core process fails every open request
within seconds, turns /health to 503 (and /livez too, without self-healing), and the log says why."""

import asyncio
import json
import os
import signal
import time

import pytest

from openai_server_utils import httpx

# Long enough (thousands of steps) that no request can finish before the engine is killed.
LONG = {"prompt": "import os", "max_tokens": 4000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def small_server(start_server, model_dir, tmp_path_factory):
    from pagoda.tiny_models import make_checkpoint

    long_model = make_checkpoint("LlamaForCausalLM", str(tmp_path_factory.mktemp("long-llama")), model_dir,
                                 max_position_embeddings=4096)
    return start_server(["--model", long_model, "--max-pending-requests", "3", "--max-engine-restarts", "0",
                         "--disable-log-requests", "--disable-uvicorn-access-log"])


async def _open_stream(aclient, url):
    request = aclient.build_request("POST", url + "/v1/completions", json={**LONG, "stream": True})
    response = await aclient.send(request, stream=True)
    assert response.status_code == 200
    lines = response.aiter_lines()
    async for line in lines:
        if line.startswith("data: {"):
            return response, lines
    raise AssertionError("stream ended before its first chunk")


async def _rest_of_stream(lines):
    events = []
    async for line in lines:
        if line.startswith("data: "):
            events.append(line[6:])
    return events


def test_overload_then_engine_death(small_server):
    server = small_server
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as aclient:
            opened = [await _open_stream(aclient, server.url) for _ in range(3)]
            # The bound is reached: a fourth request is refused at once, with a hint when to retry.
            refused = await aclient.post(server.url + "/v1/completions", json={**LONG, "max_tokens": 1})
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == 503
            killed_at = time.monotonic()
            os.kill(server.core_pid(), signal.SIGKILL)
            rests = await asyncio.wait_for(asyncio.gather(*(_rest_of_stream(lines) for _, lines in opened)), 15)
            elapsed = time.monotonic() - killed_at
            for response, _ in opened:
                await response.aclose()
            return rests, elapsed

    rests, elapsed = asyncio.run(scenario())
    assert elapsed < 10, f"open requests took {elapsed:.1f} s to fail"
    for events in rests:
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == 503 and "SIGKILL" in error["message"]
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "/health did not turn to 503"
        time.sleep(0.1)
    assert "SIGKILL" in httpx.get(server.url + "/health", timeout=10).json()["error"]["message"]
    started = time.monotonic()
    after = httpx.post(server.url + "/v1/completions", json={**LONG, "max_tokens": 1}, timeout=10)
    assert after.status_code == 503 and time.monotonic() - started < 5
    assert "engine core process died" in server.log() and "SIGKILL" in server.log()
    assert server.proc.poll() is None  # the server itself keeps answering
    # Self-healing is off (--max-engine-restarts 0): the engine is dead for good, so liveness says so too.
    live = httpx.get(server.url + "/livez", timeout=10)
    assert live.status_code == 503 and "cannot recover" in live.json()["error"]["message"], live.text


def test_server_stops_cleanly_after_engine_death(small_server):
    small_server.proc.send_signal(signal.SIGTERM)
    assert small_server.proc.wait(timeout=30) is not None
