"""SIGTERM during 50 open streams, as a pod is stopped (issue 23): none is lost — each finishes or ends with
an error event and [DONE]; /health and a new request get 503 while the server drains; the process exits 0
within --shutdown-timeout plus a few seconds and leaves no child process behind. The server runs with
--log-format json, so its whole log (frontend, uvicorn, engine core) must be one JSON object per line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from openai_server_utils import httpx

GRACE_S = 3
N_STREAMS = 50
EXIT_SLACK_S = 6  # after the grace period: ending the requests, closing connections, stopping the engine core
SHORT = {"model": "drained", "prompt": "import os", "max_tokens": 48, "ignore_eos": True, "temperature": 0,
         "stream": True}
LONG = {**SHORT, "max_tokens": 4000}  # thousands of steps: cannot finish within the grace period


@pytest.fixture(scope="module")
def long_model(model_dir, tmp_path_factory):
    from pagoda.tiny_models import make_checkpoint

    return make_checkpoint("LlamaForCausalLM", str(tmp_path_factory.mktemp("sigterm-llama")), model_dir,
                           max_position_embeddings=4096)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _open(client, url: str, body: dict):
    response = await client.send(client.build_request("POST", url + "/v1/completions", json=body), stream=True)
    assert response.status_code == 200, await response.aread()
    lines = response.aiter_lines()
    events = []
    async for line in lines:
        if line.startswith("data: "):
            events.append(line[6:])
            break
    return response, lines, events


async def _rest(response, lines, events: list) -> list:
    try:
        async for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
    except httpx.HTTPError as exc:  # a stream cut off without an ending would be a lost request
        events.append(f"CUT OFF: {exc!r}")
    finally:
        await response.aclose()
    return events


async def _until_draining(client, url: str, deadline: float) -> httpx.Response:
    while True:
        health = await client.get(url + "/health")
        if health.status_code == 503 or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.02)


def test_sigterm_during_50_streams_loses_none(start_server, long_model):
    server = start_server(["--model", long_model, "--served-model-name", "drained", "--max-num-seqs", "64",
                           "--shutdown-timeout", str(GRACE_S), "--log-format", "json",
                           "--enable-log-requests"])
    children = _descendants(server.proc.pid)
    assert server.core_pid() in children

    async def scenario():
        limits = httpx.Limits(max_connections=N_STREAMS + 8, max_keepalive_connections=N_STREAMS + 8)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            bodies = [LONG if i % 2 else SHORT for i in range(N_STREAMS)]
            opened = await asyncio.gather(*(_open(client, server.url, body) for body in bodies))
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rests = [asyncio.ensure_future(_rest(*stream)) for stream in opened]
            health = await _until_draining(client, server.url, signalled + GRACE_S)
            late = await client.post(server.url + "/v1/completions", json={**SHORT, "stream": False})
            streams = await asyncio.wait_for(asyncio.gather(*rests), GRACE_S + 30)
            return bodies, streams, health, late, signalled

    bodies, streams, health, late, signalled = asyncio.run(scenario())
    code = server.proc.wait(timeout=GRACE_S + 30)
    exited_after = time.monotonic() - signalled
    assert code == 0, server.log()[-3000:]
    assert exited_after < GRACE_S + EXIT_SLACK_S, f"exited {exited_after:.1f} s after SIGTERM"

    # While draining: readiness is 503 and a new request gets OpenAI's error JSON with 503.
    assert health.status_code == 503 and "shutting down" in health.json()["error"]["message"], health.text
    assert late.status_code == 503 and late.json()["error"]["code"] == 503, late.text

    finished = errored = 0
    for body, events in zip(bodies, streams):
        assert events[-1] == "[DONE]", events[-3:]
        last = json.loads(events[-2])
        if "error" in last:
            assert last["error"]["code"] == 503 and "shutting down" in last["error"]["message"], last
            errored += 1
        else:
            assert last["choices"][0]["finish_reason"] == "length", last
            finished += 1
    assert finished + errored == N_STREAMS
    assert errored >= N_STREAMS // 2, (finished, errored)  # every long stream was ended, with an error event

    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)], "child processes outlived the server"

    _check_json_log(server.log())


def _check_json_log(text: str) -> None:
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)  # every line is one JSON object: no stray text, no multi-line tracebacks
        assert {"time", "level", "logger", "process", "message"} <= set(record), record
        records.append(record)
    processes = {r["process"] for r in records}
    assert {"api_server", "core"} <= processes, processes
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert any(r.get("request_id") and "Received request" in r["message"] for r in records)
    assert any("SIGTERM" in r["message"] and "shutting down" in r["message"] for r in records)
    assert any(r["level"] == "WARNING" and "still in flight" in r["message"] for r in records)
