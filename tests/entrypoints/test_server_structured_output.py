"""Structured output through a real server and the openai client: every finished choice satisfies its
constraint (vLLM's extra fields, response_format, structured_outputs), full and streamed, with n > 1; the seed's
`extra_body={"guided_choice": [...]}` call; chunked prefill on a server of its own."""

import json
import re

import jsonschema
import pytest

from openai_server_utils import MODEL_NAME

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
          "required": ["ok", "color"], "additionalProperties": False}
REGEX = r"[a-c]{2,4}-[0-9]{1,2}"
MESSAGES = [{"role": "user", "content": "Classify this sentiment: Pagoda is wonderful!"}]
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}  # a random model would spend tokens on spaces

CASES = [  # (request fields, extra_body, check of one finished text)
    ({}, {"guided_choice": ["positive", "negative"]}, lambda text: text in ("positive", "negative")),
    ({}, {"guided_regex": REGEX}, lambda text: re.fullmatch(REGEX, text)),
    ({}, {"guided_json": SCHEMA, "guided_decoding_backend": "guidance", **COMPACT},
     lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}}, COMPACT,
     lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None),
    ({}, {"structured_outputs": {"choice": ["yes", "no"]}}, lambda text: text in ("yes", "no")),
    ({}, {"guided_grammar": 'root ::= ("up" | "down") " " [0-9]'}, lambda text: re.fullmatch(r"(up|down) [0-9]", text)),
]


def _check_choices(choices, check):
    finished = 0
    for choice in choices:
        if choice["finish_reason"] == "stop":
            assert check(choice["text"]), choice["text"]
            finished += 1
        else:
            assert choice["finish_reason"] == "length"
    return finished


@pytest.mark.parametrize("fields, extra, check", CASES, ids=["choice", "regex", "json", "response_format",
                                                              "structured_outputs", "grammar"])
def test_chat_outputs_satisfy_the_constraint(client, fields, extra, check):
    finished = 0
    for seed in range(2):
        response = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=60, n=2,
                                                  temperature=1.0, seed=seed, extra_body=extra, **fields)
        finished += _check_choices([{"text": c.message.content, "finish_reason": c.finish_reason}
                                    for c in response.choices], check)
        texts, reasons = {}, {}
        for chunk in client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=60, n=2,
                                                    temperature=1.0, seed=seed, extra_body=extra, stream=True,
                                                    **fields):
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
                if choice.finish_reason:
                    reasons[choice.index] = choice.finish_reason
        streamed = [{"text": texts[i], "finish_reason": reasons[i]} for i in sorted(texts)]
        finished += _check_choices(streamed, check)
        assert [s["text"] for s in streamed] == [c.message.content for c in response.choices]  # same seed
    assert finished >= 4


def test_completions_outputs_satisfy_the_constraint(client):
    response = client.completions.create(model=MODEL_NAME, prompt=["The answer is", "x ="], max_tokens=40, n=2,
                                         temperature=1.0, seed=1, extra_body={"guided_regex": REGEX})
    assert _check_choices([{"text": c.text, "finish_reason": c.finish_reason} for c in response.choices],
                          lambda text: re.fullmatch(REGEX, text)) >= 2
    response = client.completions.create(model=MODEL_NAME, prompt="ok", max_tokens=60, temperature=0,
                                         extra_body={"response_format": {"type": "json_object"}, **COMPACT})
    choice = response.choices[0]
    assert choice.finish_reason == "length" or isinstance(json.loads(choice.text), dict)


def test_the_seed_guided_choice_call(client):
    completion = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                extra_body={"guided_choice": ["positive", "negative"]})
    assert completion.choices[0].message.content in ("positive", "negative")
    assert completion.choices[0].finish_reason == "stop"


def test_a_schema_no_backend_compiles_is_a_400(client):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, extra_body={"guided_regex": "(unclosed"})
    assert "regex" in info.value.message


def test_chunked_prefill_server(start_server, model_dir):
    server = start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len", "512",
                           "--max-num-batched-tokens", "16", "--enable-chunked-prefill", "--disable-log-requests",
                           "--guided-decoding-backend", "xgrammar"])
    client = server.client()
    long_prompt = [{"role": "user", "content": "word " * 60 + "Classify it."}]
    response = client.chat.completions.create(model=MODEL_NAME, messages=long_prompt, max_tokens=30, n=2,
                                              temperature=1.0, seed=3, extra_body={"guided_regex": REGEX})
    assert _check_choices([{"text": c.message.content, "finish_reason": c.finish_reason} for c in response.choices],
                          lambda text: re.fullmatch(REGEX, text)) >= 1
