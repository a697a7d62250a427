"""Bad input: every case answers 4xx with OpenAI's error object, and the message names the field."""

import openai
import pytest

from openai_server_utils import MAX_MODEL_LEN, MODEL_NAME
from pagoda.sampling_params import SamplingParams


def error_of(response, status=400):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    return error


COMPLETION_CASES = [
    # (body changes, the field the message must name)
    ({"max_tokens": "abc"}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"prompt": {"text": "x"}}, "prompt"),
    ({"n": 1.5}, "n"),
    ({"stop": 5}, "stop"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
    ({"logprobs": 50}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"prompt_logprobs": 50}, "prompt_logprobs"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"seed": "x"}, "seed"),
    ({"suffix": "tail"}, "suffix"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 2, 999999]}, "prompt"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
]
if "presence_penalty" in SamplingParams.__dataclass_fields__:
    COMPLETION_CASES += [({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": -9}, "frequency_penalty"),
                         ({"repetition_penalty": 0}, "repetition_penalty")]
if "best_of" in SamplingParams.__dataclass_fields__:
    COMPLETION_CASES += [({"best_of": 1, "n": 2}, "best_of")]


@pytest.mark.parametrize("changes, field", COMPLETION_CASES, ids=[f for _, f in COMPLETION_CASES])
def test_bad_completion_fields(server, changes, field):
    body = {"model": MODEL_NAME, "prompt": "import os", "max_tokens": 4, **changes}
    error = error_of(server.post("/v1/completions", body))
    assert field in error["message"] or field == error["param"], error
    assert error["param"] is None or field in error["param"] or error["param"] in field


CHAT_CASES = [
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"content": "no role"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": []}, "messages"),
    ({"top_logprobs": 30, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"max_completion_tokens": 10_000}, "max_completion_tokens"),
    ({"add_generation_prompt": True, "continue_final_message": True}, "continue_final_message"),
    ({"tool_choice": "required"}, "tool_choice"),  # required without tools
    ({"chat_template": "{% for m in messages %}{{ raise_exception('bad template') }}{% endfor %}"}, "bad template"),
]


@pytest.mark.parametrize("changes, field", CHAT_CASES, ids=[f for _, f in CHAT_CASES])
def test_bad_chat_fields(server, changes, field):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **changes}
    error = error_of(server.post("/v1/chat/completions", body))
    assert field in error["message"] or field in (error["param"] or ""), error


def test_invalid_json(server):
    response = server.post("/v1/completions", content=b'{"prompt": "x", ', headers={"content-type": "application/json"})
    assert "JSON" in error_of(response)["message"]


def test_unknown_model_is_404(client, server):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert "no-such-model" in str(info.value)
    error = error_of(server.post("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
                     404)
    assert error["param"] == "model" and error["type"] == "NotFoundError"


def test_too_long_gives_both_numbers(client, server):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt="import os", max_tokens=MAX_MODEL_LEN)
    message = str(info.value)
    prompt_tokens = server.post("/tokenize", {"prompt": "import os"}).json()["count"]
    assert str(MAX_MODEL_LEN) in message and str(MAX_MODEL_LEN + prompt_tokens) in message
    assert str(prompt_tokens) in message
    long_prompt = list(range(10, 10 + MAX_MODEL_LEN))
    error = error_of(server.post("/v1/completions", {"model": MODEL_NAME, "prompt": long_prompt, "max_tokens": 1}))
    assert str(MAX_MODEL_LEN) in error["message"] and error["param"] == "prompt"


def test_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt="x", temperature=-0.5)
    assert "temperature" in str(info.value)


def test_tokenize_errors(server):
    assert error_of(server.post("/tokenize", {}))["param"] in ("prompt", "messages")
    assert error_of(server.post("/detokenize", {"tokens": [10**7]}))["param"] == "tokens"
    assert error_of(server.post("/detokenize", {"tokens": "abc"}))["param"] == "tokens"


def test_embeddings_on_a_generation_model(server):
    error = error_of(server.post("/v1/embeddings", {"model": MODEL_NAME, "input": "hello"}))
    assert "embedding" in error["message"]
