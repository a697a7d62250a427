"""Slow and numerous clients cannot hold the server: headers and bodies have deadlines, connections a cap,
and big tokenizer work runs off the event loop, so /health keeps answering throughout.

The server here runs with short deadlines (--header-read-timeout 2, --body-read-timeout 2) and a small
connection cap (--limit-concurrency 8); every wait below is bounded, and sockets are loopback only.
"""

import json
import socket
import time

import pytest

from openai_server_utils import MODEL_NAME, HealthPoller, httpx

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
CONNECTIONS = 8
CLOSE_BOUND_S = 15.0  # generous: the deadline plus scheduling slack on a busy 2-core machine


@pytest.fixture(scope="module")
def slow_server(start_server, model_dir):
    return start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len", "512",
                         "--header-read-timeout", str(HEADER_TIMEOUT_S), "--body-read-timeout", str(BODY_TIMEOUT_S),
                         "--limit-concurrency", str(CONNECTIONS), "--max-prompt-chars", "-1",
                         "--disable-uvicorn-access-log", "--disable-log-requests"])


def closed_within(sock: socket.socket, bound_s: float, trickle: bytes = b"") -> tuple[float, bytes]:
    """Send `trickle` one byte per second until the server closes the connection; (seconds, bytes read)."""
    started, received = time.monotonic(), b""
    sock.settimeout(1.0)
    for i in range(int(bound_s) + 1):
        if trickle:
            try:
                sock.sendall(trickle[i % len(trickle):i % len(trickle) + 1])
            except OSError:  # closed while we wrote
                return time.monotonic() - started, received
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started, received
        if not data:
            return time.monotonic() - started, received
        received += data
    raise AssertionError(f"the server kept the connection open for more than {bound_s} s")


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def test_headers_trickled_one_byte_a_second_are_cut_off(slow_server):
    with HealthPoller(slow_server), connect(slow_server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        elapsed, _ = closed_within(sock, CLOSE_BOUND_S, trickle=b"X-Slow: " + b"a" * 64)
    assert elapsed >= HEADER_TIMEOUT_S - 0.5


def test_a_connection_that_sends_nothing_is_closed(slow_server):
    with connect(slow_server) as sock:
        elapsed, received = closed_within(sock, CLOSE_BOUND_S)
    assert received == b"" and elapsed >= HEADER_TIMEOUT_S - 0.5


def test_a_kept_alive_connection_gets_a_header_deadline_for_each_request(slow_server):
    with connect(slow_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # a second request that never completes its headers
        closed_within(sock, CLOSE_BOUND_S, trickle=b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")


def test_a_body_trickled_one_byte_a_second_gets_408(slow_server):
    with HealthPoller(slow_server), connect(slow_server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        elapsed, received = closed_within(sock, CLOSE_BOUND_S, trickle=b'{"prompt": "' + b"a" * 100)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), received
    error = json.loads(body)["error"]
    assert error["code"] == 408 and "--body-read-timeout" in error["message"]
    assert elapsed >= BODY_TIMEOUT_S - 0.5


def test_a_slow_but_steady_upload_is_not_cut(slow_server):
    padding = "p" * (512 * 1024)  # an unknown field: ignored, so the request is a normal completion
    data = json.dumps({"model": MODEL_NAME, "prompt": "x", "max_tokens": 1, "padding": padding}).encode()
    with connect(slow_server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data))
        started, piece = time.monotonic(), 64 * 1024
        for offset in range(0, len(data), piece):  # ~200 KiB/s: longer than the 2 s base deadline in all
            sock.sendall(data[offset:offset + piece])
            time.sleep(0.3)
        assert time.monotonic() - started > BODY_TIMEOUT_S
        _, received = closed_within(sock, CLOSE_BOUND_S)
    assert received.startswith(b"HTTP/1.1 200"), received[:300]


def test_connections_over_the_cap_get_503_but_health_still_answers(slow_server):
    idle = [connect(slow_server) for _ in range(CONNECTIONS)]
    try:
        time.sleep(0.2)
        refused = httpx.post(slow_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        assert "--limit-concurrency" in refused.json()["error"]["message"]
        assert httpx.get(slow_server.url + "/health", timeout=30).status_code == 200
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 30
    while True:  # the server notices the closed sockets at once; allow it a moment
        response = httpx.post(slow_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.text


def test_tokenizing_a_huge_prompt_does_not_block_the_event_loop(slow_server):
    prompt = "def f(x):\n    return x + 1\n" * 200_000  # ~5.6 MB: seconds of tokenizing, on a worker thread
    with HealthPoller(slow_server):
        response = httpx.post(slow_server.url + "/tokenize", json={"prompt": prompt}, timeout=300)
        assert response.status_code == 200 and response.json()["count"] > 500_000
        chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
        too_long = httpx.post(slow_server.url + "/v1/chat/completions", json=chat, timeout=300)
        assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "messages"
