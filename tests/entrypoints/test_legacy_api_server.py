"""vLLM's legacy demo server, `python -m pagoda.entrypoints.api_server`: POST /generate answers {"text": [prompt +
completion, ...]}, streams newline-delimited JSON chunks of the whole text so far, refuses bad fields with a 400
naming them, answers /health, and stops with exit code 0 on SIGTERM."""

from __future__ import annotations

import json
import signal

import pytest

from openai_server_utils import RemoteServer, httpx

GREEDY = {"prompt": "import os", "max_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def demo(model_dir, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("demo-log") / "server.log")
    server = RemoteServer(["--model", model_dir, "--max-model-len", "256", "--log-level", "warning"], log,
                          entry=("-m", "pagoda.entrypoints.api_server"))
    yield server
    server.close()


def test_generate_returns_prompt_plus_completion(demo):
    assert demo.get("/health").status_code == 200
    reply = demo.post("/generate", json=GREEDY)
    assert reply.status_code == 200, reply.text
    (text,) = reply.json()["text"]
    assert text.startswith("import os") and len(text) > len("import os")
    assert demo.post("/generate", json=GREEDY).json()["text"] == [text]  # greedy: the same again
    several = demo.post("/generate", json={**GREEDY, "n": 2, "temperature": 1.0, "seed": 3}).json()["text"]
    assert len(several) == 2 and all(t.startswith("import os") for t in several)


def test_stream_is_newline_delimited_json_of_the_text_so_far(demo):
    expected = demo.post("/generate", json=GREEDY).json()["text"][0]
    with httpx.stream("POST", demo.url + "/generate", json={**GREEDY, "stream": True}, timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
        raw = reply.read().decode()
    assert raw.endswith("\n") and "\0" not in raw
    chunks = [json.loads(line)["text"][0] for line in raw.splitlines()]
    assert len(chunks) > 1
    for before, after in zip(chunks, chunks[1:]):
        assert after.startswith(before)  # each chunk holds everything so far, not a delta
    assert chunks[0].startswith("import os") and chunks[-1] == expected


@pytest.mark.parametrize("body, param, words", [
    ({"max_tokens": 4}, "prompt", "prompt is required"),
    ({"prompt": 5}, "prompt", "prompt must be a string"),
    ({"prompt": "x", "stream": "yes"}, "stream", "stream must be true or false"),
    ({"prompt": "x", "temprature": 0.5}, "temprature", "unknown field 'temprature'"),
    ({"prompt": "x", "temperature": -1}, "temperature", "temperature must be >= 0"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens", "max_tokens"),
])
def test_bad_fields_are_400_naming_the_field(demo, body, param, words):
    reply = demo.post("/generate", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"] and error["code"] == 400, error


def test_bad_json_is_400(demo):
    for content in (b"{not json", b"[1, 2]"):
        reply = httpx.post(demo.url + "/generate", content=content, headers={"content-type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == 400, reply.text


def test_too_long_prompt_is_400_and_sigterm_exits_0(demo):
    reply = demo.post("/generate", json={"prompt": "import os " * 400, "max_tokens": 4})
    assert reply.status_code == 400, reply.text
    assert demo.get("/health").status_code == 200  # the engine lives on
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=30) == 0
