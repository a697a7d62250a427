"""SIGTERM as Kubernetes sends it: in-flight work is drained or ended cleanly, never cut off; exit 0."""

import json
import signal
import threading
import time

from openai_server_utils import httpx

LONG = {"model": "drained", "prompt": "import os", "max_tokens": 400, "ignore_eos": True, "temperature": 0}


def _start(start_server, model_dir, timeout_s: float):
    return start_server(["--model", model_dir, "--max-model-len", "512", "--served-model-name", "drained",
                         "--shutdown-timeout", str(timeout_s), "--disable-uvicorn-access-log"])


def _stream_lines(server, body, lines: list, first_chunk: threading.Event) -> None:
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as reply:
        for line in reply.iter_lines():
            if line:
                lines.append(line)
                first_chunk.set()


def test_sigterm_ends_open_streams_and_requests_with_errors(start_server, model_dir):
    """--shutdown-timeout 0 (vLLM's default): every open request ends at once, each with a proper ending."""
    server = _start(start_server, model_dir, 0)
    lines: list[str] = []
    first = threading.Event()
    streamer = threading.Thread(target=_stream_lines, args=(server, LONG, lines, first), daemon=True)
    streamer.start()
    replies = []
    plain = threading.Thread(target=lambda: replies.append(server.post("/v1/completions", json=LONG, timeout=60)),
                             daemon=True)
    plain.start()
    assert first.wait(30), "the stream never started"
    time.sleep(0.2)
    server.proc.send_signal(signal.SIGTERM)
    streamer.join(30)
    plain.join(30)
    assert server.proc.wait(timeout=30) == 0
    assert lines[-1] == "data: [DONE]", lines[-3:]
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert "error" in events[-1] and "shutting down" in events[-1]["error"]["message"], events[-1]
    assert events[-1]["error"]["code"] == 503
    assert len(replies) == 1
    reply = replies[0]
    if reply.status_code != 200:  # it may have finished before the signal; if not, it ended with OpenAI's error
        assert reply.status_code == 503, reply.text
        assert "shutting down" in reply.json()["error"]["message"]
    assert "ended" in server.log() or reply.status_code == 200


def test_sigterm_drains_within_the_shutdown_timeout(start_server, model_dir):
    """With a drain window, a request in flight finishes normally, a new one gets 503, and the process exits 0."""
    server = _start(start_server, model_dir, 60)
    short = {**LONG, "max_tokens": 200}
    replies = []
    worker = threading.Thread(target=lambda: replies.append(server.post("/v1/completions", json=short, timeout=60)),
                              daemon=True)
    deadline = time.monotonic() + 30
    worker.start()
    while server.metric("vllm:num_requests_running", model_name="drained") < 1:
        assert time.monotonic() < deadline and worker.is_alive(), "the request never ran"
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    late = None
    while time.monotonic() < deadline and worker.is_alive():
        try:
            late = server.post("/v1/completions", json=short, timeout=10)
            health = server.get("/health")
            break
        except httpx.HTTPError:  # the listener may already be closed if the drain was quick
            break
    worker.join(30)
    assert server.proc.wait(timeout=60) == 0
    assert replies and replies[0].status_code == 200, replies
    assert replies[0].json()["usage"]["completion_tokens"] == 200
    if late is not None:
        assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"], late.text
        assert health.status_code == 503
