"""Validate before admitting, release on every failure path, and cap the work one request can ask for.

Every bad input (integers past 64 bits, NaN, lone surrogates, unsafe request ids, n/best_of over the caps,
prompts too long to tokenize, responses with too many logprobs) is a 400 naming the field; failures at
every stage leave nothing registered (running and waiting back to 0, a request at the pending limit
still admitted); an engine that dies under a non-streamed request answers it with OpenAI's 503 JSON.
"""

import asyncio
import json
import os
import signal
import socket
import time

import pytest

from openai_server_utils import MODEL_NAME, httpx

PENDING = 4  # --max-pending-requests
MAX_N = 6  # --max-n-sequences (more than PENDING, so both limits can be hit)
BIG = 2 ** 70
LONG = {"model": MODEL_NAME, "prompt": "import os", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def limits_server(start_server, model_dir, tmp_path_factory):
    from pagoda.tiny_models import make_checkpoint

    long_model = make_checkpoint("LlamaForCausalLM", str(tmp_path_factory.mktemp("admission-llama")), model_dir,
                                 max_position_embeddings=4096)
    return start_server(["--model", long_model, "--served-model-name", MODEL_NAME, "--max-model-len", "4096",
                         "--max-pending-requests", str(PENDING), "--max-n-sequences", str(MAX_N),
                         "--max-logprobs", "5", "--disable-uvicorn-access-log", "--enable-log-requests"])


def error_of(response, status=400):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status, error
    return error


def raw_post(server, path, body: bytes, headers=None, timeout=60):
    return httpx.post(server.url + path, content=body, timeout=timeout,
                      headers={"content-type": "application/json", **(headers or {})})


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def drained(server) -> bool:
    return (server.metric("vllm:num_requests_running", model_name=MODEL_NAME) == 0
            and server.metric("vllm:num_requests_waiting", model_name=MODEL_NAME) == 0)


# ---- integers, floats, strings ------------------------------------------------------------------------
COMPLETION_INTS = ["priority", "seed", "max_tokens", "n", "best_of", "top_k", "min_tokens", "logprobs",
                   "prompt_logprobs", "truncate_prompt_tokens"]


@pytest.mark.parametrize("field", COMPLETION_INTS)
def test_integers_past_64_bits_are_400_naming_the_field(limits_server, field):
    body = {"model": MODEL_NAME, "prompt": "import os", "max_tokens": 2, field: BIG}
    error = error_of(limits_server.post("/v1/completions", body))
    assert error["param"] == field and "9223372036854775807" in error["message"], error


@pytest.mark.parametrize("body, field", [
    ({"stop_token_ids": [BIG]}, "stop_token_ids"),
    ({"allowed_token_ids": [BIG]}, "allowed_token_ids"),
    ({"logit_bias": {str(BIG): 1.0}}, "logit_bias"),
    ({"stop_token_ids": [99999]}, "stop_token_ids"),  # 64-bit but outside the vocabulary
])
def test_token_ids_out_of_range(limits_server, body, field):
    error = error_of(limits_server.post("/v1/completions", {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2,
                                                            **body}))
    assert field in (error["param"] or ""), error


def test_chat_and_detokenize_integers(limits_server):
    messages = [{"role": "user", "content": "hi"}]
    for field in ("max_completion_tokens", "top_logprobs", "priority"):
        error = error_of(limits_server.post("/v1/chat/completions", {"messages": messages, field: BIG}))
        assert error["param"] == field, error
    assert error_of(limits_server.post("/detokenize", {"tokens": [BIG]}))["param"].startswith("tokens")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_floats_are_400(limits_server, literal):
    body = b'{"prompt": "x", "max_tokens": 2, "temperature": ' + literal.encode() + b"}"
    error = error_of(raw_post(limits_server, "/v1/completions", body))
    assert error["param"] == "temperature" and "finite" in error["message"], error


@pytest.mark.parametrize("path, body, field", [
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', "prompt"),
    ("/v1/completions", b'{"prompt": ["ok", "a\\udfffb"], "max_tokens": 2}', "prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 2, "stop": ["\\ud800"]}', "stop"),
    ("/v1/completions", b'{"prompt": "x", "model": "\\ud800"}', "model"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udc00"}]}', "messages.0.content"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
     "messages.0.content"),
    ("/tokenize", b'{"prompt": "\\ud800"}', "prompt"),
])
def test_lone_surrogates_are_400_naming_the_field(limits_server, path, body, field):
    error = error_of(raw_post(limits_server, path, body))
    assert error["param"] == field and "surrogate" in error["message"], error


# ---- request ids and the log ------------------------------------------------------------------------
@pytest.mark.parametrize("request_id", ["abc\nINFO FAKE LINE", "x" * 129, "a b", ""])
def test_unsafe_request_id_in_the_body_is_400(limits_server, request_id):
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1, "request_id": request_id}
    assert error_of(limits_server.post("/v1/completions", body))["param"] == "request_id"


@pytest.mark.parametrize("header", ["x" * 200, "abc def", "a\tb", "é"])
def test_unsafe_x_request_id_header_is_400(limits_server, header):
    response = httpx.post(limits_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                          headers={"X-Request-Id": header.encode("utf-8")}, timeout=60)
    error = error_of(response)
    assert error["param"] == "X-Request-Id" and "128" in error["message"], error


def test_safe_request_ids_are_echoed_and_may_repeat(limits_server):
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1, "request_id": "trace-01:a.b_C"}
    first = limits_server.post("/v1/completions", body)
    second = limits_server.post("/v1/completions", body)  # the engine's own ids never collide
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"] == "cmpl-trace-01:a.b_C"


def test_no_request_data_forges_a_log_line(limits_server):
    forged = "INFO 00:00:00.000 pagoda.forged: FAKE LINE"
    response = limits_server.post("/v1/completions", {"model": MODEL_NAME, "prompt": "x\n" + forged + "\n",
                                                      "max_tokens": 1, "stop": ["\n" + forged]})
    assert response.status_code == 200, response.text
    limits_server.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "request_id": "a\n" + forged,
                                           ("\n" + forged): 1})
    raw_post(limits_server, "/v1/%0a" + forged.replace(" ", "%20"), b"{}")
    wait_for(lambda: "Received request" in limits_server.log(), 10, "the request was not logged")
    lines = limits_server.log().splitlines()
    assert not [line for line in lines if line.startswith(forged)], "a request forged a log line"
    assert any("\\n" + forged in line for line in lines)  # the prompt is logged, escaped


# ---- caps on n / best_of and on sizes ---------------------------------------------------------------
@pytest.mark.parametrize("body, field, words", [
    ({"n": MAX_N + 1}, "n", "--max-n-sequences"),
    ({"n": 10000}, "n", "--max-n-sequences"),
    ({"n": 1, "best_of": MAX_N + 1}, "best_of", "--max-n-sequences"),
    ({"n": PENDING + 1}, "n", "--max-pending-requests"),  # can never be admitted: 400, not 503
    ({"n": 1, "best_of": PENDING + 1}, "best_of", "--max-pending-requests"),
    ({"n": 3, "prompt": ["a", "b"]}, "n", "--max-pending-requests"),  # 2 prompts x 3 > 4
])
def test_n_and_best_of_over_the_caps_are_400(limits_server, body, field, words):
    request = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1, **body}
    error = error_of(limits_server.post("/v1/completions", request))
    assert error["param"] == field and words in error["message"], error
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **body}
    chat.pop("prompt", None)
    if "prompt" not in body:
        assert error_of(limits_server.post("/v1/chat/completions", chat))["param"] == field


def test_best_of_counts_against_the_pending_limit(limits_server):
    with httpx.stream("POST", limits_server.url + "/v1/completions", json={**LONG, "stream": True},
                      timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: dropping the iterator would close the stream
        next(line for line in lines if line.startswith("data: {"))
        busy = limits_server.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "n": 1, "best_of": PENDING})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
    wait_for(lambda: drained(limits_server), 20, "the stream's request was not released")
    admitted = limits_server.post("/v1/completions", {"prompt": "x", "max_tokens": 1, "n": 1, "best_of": PENDING})
    assert admitted.status_code == 200, admitted.text
    assert len(admitted.json()["choices"]) == 1


def test_prompt_too_long_to_tokenize_is_refused_by_its_length(limits_server):
    started = time.monotonic()
    response = raw_post(limits_server, "/v1/completions",
                        json.dumps({"prompt": "x = 1 " * (5 * 1024 * 1024), "max_tokens": 1}).encode(), timeout=120)
    error = error_of(response)  # 30 MB: refused from its length, never tokenized
    assert error["param"] == "prompt" and "not tokenized" in error["message"] and "characters" in error["message"]
    assert time.monotonic() - started < 60
    chat = {"messages": [{"role": "user", "content": "y" * 300_000}], "max_tokens": 1}
    assert error_of(limits_server.post("/v1/chat/completions", chat))["param"] == "messages"
    assert error_of(limits_server.post("/tokenize", {"prompt": "z" * 300_000}))["param"] == "prompt"
    assert limits_server.get("/health", timeout=10).status_code == 200


def test_response_logprobs_over_the_cap_are_400(limits_server):
    # The default cap: 2 x 4096 x (1 + max_logprobs 5) = 49152 entries; 4 x 3000 x 6 = 72000.
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 3000, "n": 4, "logprobs": 5, "ignore_eos": True}
    error = error_of(limits_server.post("/v1/completions", body))
    assert error["param"] == "logprobs" and "--max-response-logprobs" in error["message"], error
    assert "49152" in error["message"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "n": 4, "logprobs": True, "top_logprobs": 5}
    assert error_of(limits_server.post("/v1/chat/completions", chat))["param"] == "top_logprobs"
    one = limits_server.post("/v1/completions", {**body, "n": 1, "max_tokens": 8})  # well within the cap
    assert one.status_code == 200 and len(one.json()["choices"][0]["logprobs"]["tokens"]) == 8


# ---- failures at every stage release what they took -------------------------------------------------
def _disconnect_mid_stream(server, body):
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines() if line.startswith("data: {"))


def _disconnect_mid_request(server, path, body):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + path, json=body, timeout=httpx.Timeout(60, read=1.0))


def _close_before_reading(server, body):
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))


def test_failures_at_every_stage_leave_nothing_registered(limits_server):
    server = limits_server
    refusals = [
        ("/v1/completions", {"prompt": "x", "priority": BIG}),  # parsing
        ("/v1/completions", {"prompt": "x", "max_tokens": 2, "stop_token_ids": [99999]}),  # after tokenizing
        ("/v1/completions", {"prompt": "x", "max_tokens": 2, "priority": 1}),  # the engine's own check
        ("/v1/completions", {"prompt": "x", "max_tokens": 2, "n": 2, "seed": 2 ** 63 - 1}),  # child 1's seed
        ("/v1/completions", {"prompt": [[10, 11], [10] * 5000], "max_tokens": 2}),  # the second prompt
        ("/v1/completions", {"prompt": "x", "max_tokens": 2, "use_beam_search": True, "n": 2, "priority": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2, "seed": 2 ** 63 - 1}),
    ]
    for path, body in refusals:
        response = server.post(path, body)
        assert 400 <= response.status_code < 500, (body, response.text)
    _disconnect_mid_stream(server, LONG)
    _disconnect_mid_stream(server, {**LONG, "n": 2, "prompt": ["a", "b"]})
    _disconnect_mid_request(server, "/v1/completions", {**LONG, "n": 2})
    _disconnect_mid_request(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                             "max_tokens": 3000, "ignore_eos": True})
    _disconnect_mid_request(server, "/v1/completions", {"prompt": "x", "max_tokens": 3000, "ignore_eos": True,
                                                        "use_beam_search": True, "n": 2})
    _close_before_reading(server, {**LONG, "stream": True})
    _close_before_reading(server, LONG)
    wait_for(lambda: drained(server), 30, "requests still running or waiting after every failure")
    at_limit = server.post("/v1/completions", {"prompt": "x", "max_tokens": 2, "n": PENDING})
    assert at_limit.status_code == 200, at_limit.text
    assert len(at_limit.json()["choices"]) == PENDING


# ---- an engine that dies under a non-streamed request -----------------------------------------------
def test_engine_death_answers_in_flight_requests_with_503_json(start_server, model_dir, tmp_path_factory):
    from pagoda.tiny_models import make_checkpoint

    long_model = make_checkpoint("LlamaForCausalLM", str(tmp_path_factory.mktemp("dying-llama")), model_dir,
                                 max_position_embeddings=4096)
    server = start_server(["--model", long_model, "--served-model-name", MODEL_NAME, "--max-model-len", "4096",
                           "--disable-uvicorn-access-log", "--disable-log-requests"])

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as aclient:
            completion = asyncio.ensure_future(aclient.post(server.url + "/v1/completions", json=LONG))
            chat = asyncio.ensure_future(aclient.post(server.url + "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "x"}], "max_tokens": 3000, "ignore_eos": True}))
            deadline = time.monotonic() + 30
            while server.metric("vllm:generation_tokens_total", model_name=MODEL_NAME) < 20:
                assert time.monotonic() < deadline, "the requests never started generating"
                await asyncio.sleep(0.1)
            os.kill(server.core_pid(), signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(completion, chat), 30)

    for response in asyncio.run(scenario()):
        error = error_of(response, 503)
        assert error["type"] == "ServiceUnavailableError", error


# ---- the flags ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, words", [
    (["--max-n-sequences", "0"], "--max-n-sequences"),
    (["--max-prompt-chars", "0"], "--max-prompt-chars"),
    (["--max-response-logprobs", "-5"], "--max-response-logprobs"),
    (["--chat-template-render-timeout", "0"], "--chat-template-render-timeout"),
    (["--header-read-timeout", "-1"], "--header-read-timeout"),
    (["--body-read-timeout", "-1"], "--body-read-timeout"),
    (["--body-read-min-rate", "-1"], "--body-read-min-rate"),
    (["--limit-concurrency", "0"], "--limit-concurrency"),
])
def test_limit_flags_are_validated_naming_the_flag(model_dir, flags, words):
    from pagoda.entrypoints.openai import cli_args
    from pagoda.entrypoints.openai.api_server import make_parser

    args = make_parser().parse_args(["--model", model_dir, *flags])
    with pytest.raises(ValueError, match=words):
        cli_args.validate_args(args)


def test_limit_flag_defaults(model_dir, monkeypatch):
    from pagoda.entrypoints.openai import cli_args
    from pagoda.entrypoints.openai.api_server import make_parser

    monkeypatch.delenv("VLLM_MAX_N_SEQUENCES", raising=False)
    args = make_parser().parse_args(["--model", model_dir, "--max-pending-requests", "10"])
    cli_args.validate_args(args)
    assert (args.max_n_sequences, args.limit_concurrency, args.trust_request_chat_template) == (128, 266, False)
    assert (args.header_read_timeout, args.body_read_timeout, args.body_read_min_rate) == (30.0, 60.0, 65536)
    monkeypatch.setenv("VLLM_MAX_N_SEQUENCES", "16384")  # vLLM's variable sets the default
    args = make_parser().parse_args(["--model", model_dir])
    cli_args.validate_args(args)
    assert args.max_n_sequences == 16384
