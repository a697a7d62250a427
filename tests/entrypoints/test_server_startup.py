"""Start-up as a Kubernetes probe sees it, and `--root-path` as a proxy sees it."""

import re
import socket
import subprocess
import sys
import time

from openai_server_utils import REPO, RemoteServer


def _log(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def test_port_refuses_connections_until_the_engine_is_ready(model_dir, tmp_path):
    """Before the engine is ready nothing listens (a probe is refused at once instead of hanging in
    the backlog); once it is, /health answers 200 at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = str(tmp_path / "server.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pagoda.entrypoints.openai.api_server", "--model", model_dir,
                                 "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "128"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**__import__("os").environ, "PYTHONPATH": REPO})
    try:
        deadline = time.monotonic() + 120
        while "will listen on" not in _log(log_path):  # the port is bound from here on
            assert proc.poll() is None and time.monotonic() < deadline, _log(log_path)
            time.sleep(0.05)
        refused_early = 0
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, _log(log_path)
            ready_before = "ready on" in _log(log_path)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    conn.settimeout(5)
                    reply = conn.recv(200)
                assert reply.startswith(b"HTTP/1.1 200"), reply
                break
            except ConnectionRefusedError:
                assert not ready_before, "refused after the server said it was ready"
                refused_early += 1
                time.sleep(0.05)
            else:
                pass
        assert refused_early >= 1, "the engine became ready before any probe; nothing was checked"
        assert "ready on" in _log(log_path)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_root_path_serves_under_the_prefix_and_bare(start_server, model_dir):
    server: RemoteServer = start_server(["--model", model_dir, "--max-model-len", "128", "--root-path", "/llm",
                                         "--served-model-name", "rooted"])
    for prefix in ("/llm", ""):
        assert server.get(f"{prefix}/health").status_code == 200
        models = server.get(f"{prefix}/v1/models")
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "rooted"
        reply = server.post(f"{prefix}/v1/completions", json={"model": "rooted", "prompt": "import os",
                                                             "max_tokens": 2, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 2
    import openai

    client = openai.OpenAI(base_url=server.url + "/llm/v1", api_key="none", max_retries=0, timeout=60)
    assert client.completions.create(model="rooted", prompt="x", max_tokens=1).choices[0].text is not None
    assert server.get("/llm/nothing-here").status_code == 404
    assert re.search(r"ready on http://127\.0\.0\.1:\d+", server.log())
