"""Request-supplied chat templates: refused without --trust-request-chat-template (vLLM's rule and message);
with it, rendered in a separate process with a time, memory and output limit, so a template that loops
for minutes or builds gigabytes gets a 400 while /health keeps answering.

`server` (conftest.py) trusts request templates with the default 5 s render limit; `untrusting_server`
runs without the flag.
"""

import asyncio
import time

import pytest

from openai_server_utils import MODEL_NAME, HealthPoller, httpx

MESSAGES = [{"role": "user", "content": "hi"}]
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
UNTRUSTED = ("Chat template is passed with request, but --trust-request-chat-template is not set. "
             "Refused request with untrusted chat template.")


@pytest.fixture(scope="module")
def untrusting_server(start_server, model_dir):
    return start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len", "512",
                         "--disable-uvicorn-access-log", "--disable-log-requests"])


def error_of(response, status=400):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status, error
    return error


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1, "chat_template": "{{ 'x' }}"}),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1,
                              "chat_template_kwargs": {"chat_template": "{{ 'x' }}"}}),
    ("/tokenize", {"messages": MESSAGES, "chat_template": "{{ 'x' }}"}),
])
def test_request_templates_need_the_trust_flag(untrusting_server, path, body):
    error = error_of(untrusting_server.post(path, body))
    assert error["message"] == UNTRUSTED and error["param"] == "chat_template"
    plain = untrusting_server.post(path, {k: v for k, v in body.items() if not k.startswith("chat_template")})
    assert plain.status_code == 200, plain.text  # the server's own template still renders


def test_a_trusted_template_renders_and_its_kwargs_template_too(server):
    template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    by_field = server.post("/tokenize", {"messages": MESSAGES, "chat_template": template}).json()
    by_kwargs = server.post("/tokenize", {"messages": MESSAGES, "chat_template_kwargs": {"chat_template": template}})
    plain = server.post("/tokenize", {"prompt": "<hi>", "add_special_tokens": False}).json()
    assert by_field["tokens"] == by_kwargs.json()["tokens"] == plain["tokens"]


def test_a_template_that_runs_for_minutes_is_stopped_while_health_answers(server):
    started = time.monotonic()
    with HealthPoller(server):
        error = error_of(server.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1,
                                                              "chat_template": NESTED_LOOPS}, timeout=120))
    assert "longer than 5 s" in error["message"] and error["param"] == "chat_template", error
    assert time.monotonic() - started < 60
    after = server.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1,
                                                 "chat_template": "{{ messages[0]['content'] }}"})
    assert after.status_code == 200, after.text  # a fresh renderer took the killed one's place


@pytest.mark.parametrize("template, words", [
    ("{{ 'x' * 50000000 }}", "characters"),  # output far larger than what fits in the model's context
    ("{% set big = 'a' * 3000000000 %}{{ big | length }}", "memory"),  # past the renderer's memory cap
    ("{{ '\\ud800' }}", "surrogate"),  # a rendered text the tokenizer could not encode
])
def test_templates_that_outgrow_their_limits_are_400(server, template, words):
    error = error_of(server.post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1,
                                                          "chat_template": template}, timeout=120))
    assert words in error["message"], error
    assert server.get("/health").status_code == 200


def test_many_bad_templates_at_once_leave_the_server_healthy(server):
    async def burst():
        async with httpx.AsyncClient(timeout=120, headers=server.headers()) as aclient:
            return await asyncio.gather(*(aclient.post(server.url + "/v1/chat/completions", json={
                "messages": MESSAGES, "max_tokens": 1, "chat_template": "{{ raise_exception('no %d') }}" % i})
                for i in range(6)))

    with HealthPoller(server):
        responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [400] * 6
    assert all("no " in r.json()["error"]["message"] for r in responses)
