"""Structured output's request fields (issue 18) become one SamplingParams.structured_outputs, the same way on
/v1/completions and /v1/chat/completions: every form vLLM takes (guided_*, structural_tag, structured_outputs,
response_format) maps to the expected StructuredOutputsParams, read from the request models themselves; two
constraints, or a bad value, are a 400 naming the field (a few through the real server); the mapping reaches the
engine's SamplingParams (the server's request log); and such SamplingParams survive the frontend <-> engine-core
wire format. Generated text is not asserted here (the end-to-end structured-output tests check it)."""

import json
import time

import pytest
from pydantic import ValidationError

from openai_server_utils import MAX_MODEL_LEN, MODEL_NAME
from pagoda.core.request import EngineCoreRequest
from pagoda.engine import serial
from pagoda.entrypoints.openai.errors import APIError
from pagoda.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagoda.entrypoints.openai.structured_request import structured_outputs_of
from pagoda.sampling_params import GuidedDecodingParams, SamplingParams, StructuredOutputsParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
LEGACY_TAG = {"type": "structural_tag", "structures": [{"begin": "<f>", "schema": SCHEMA, "end": "</f>"}],
              "triggers": ["<f"]}
NEW_TAG = {"type": "structural_tag", "format": {"type": "const_string", "value": "hi"}}


def completion_request(**body):
    return CompletionRequest(prompt="x", **body)


def chat_request(**body):
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **body)


BUILDERS = pytest.mark.parametrize("build", [completion_request, chat_request], ids=["completions", "chat"])


def params_of(build, **body):
    return structured_outputs_of(build(**body))


def refusal(build, **body) -> APIError:
    with pytest.raises(APIError) as info:
        params_of(build, **body)
    assert info.value.status == 400
    return info.value


# ---- every form -> the expected StructuredOutputsParams ---------------------------------------------------------
MAPPINGS = [
    ({}, None),
    ({"guided_json": SCHEMA}, {"json": SCHEMA}),
    ({"guided_json": json.dumps(SCHEMA)}, {"json": json.dumps(SCHEMA)}),  # the JSON text is passed as given
    ({"guided_regex": r"\d{3}"}, {"regex": r"\d{3}"}),
    ({"guided_choice": ["yes", "no"]}, {"choice": ["yes", "no"]}),
    ({"guided_grammar": 'root ::= "a" | "b"'}, {"grammar": 'root ::= "a" | "b"'}),
    ({"structural_tag": json.dumps(NEW_TAG)}, {"structural_tag": json.dumps(NEW_TAG)}),
    ({"guided_regex": "a+", "guided_whitespace_pattern": r"[ ]?"}, {"regex": "a+", "whitespace_pattern": r"[ ]?"}),
    ({"guided_choice": ["a"], "guided_decoding_backend": "guidance"}, {"choice": ["a"], "backend": "guidance"}),
    ({"guided_json": SCHEMA, "guided_decoding_backend": "xgrammar:no-fallback,disable-any-whitespace"},
     {"json": SCHEMA, "backend": "xgrammar", "disable_fallback": True, "disable_any_whitespace": True}),
    ({"guided_json": SCHEMA, "guided_decoding_backend": "guidance:no-additional-properties"},
     {"json": SCHEMA, "backend": "guidance", "disable_additional_properties": True}),
    ({"guided_decoding_backend": "outlines"}, None),  # tuning alone constrains nothing (vLLM's from_optional)
    ({"guided_whitespace_pattern": " "}, None),
    ({"guided_json": None, "guided_choice": None}, None),  # the neutral value of each field
    ({"structured_outputs": {"json": SCHEMA}}, {"json": SCHEMA}),
    ({"structured_outputs": {"regex": "[a-z]+", "disable_any_whitespace": True, "whitespace_pattern": " "}},
     {"regex": "[a-z]+", "disable_any_whitespace": True, "whitespace_pattern": " "}),
    ({"structured_outputs": {"choice": ["x", "y"], "disable_fallback": True, "backend": "xgrammar"}},
     {"choice": ["x", "y"], "disable_fallback": True, "backend": "xgrammar"}),
    ({"structured_outputs": {"grammar": "root ::= 'a'"}}, {"grammar": "root ::= 'a'"}),
    ({"structured_outputs": {"json_object": True, "disable_additional_properties": True}},
     {"json_object": True, "disable_additional_properties": True}),
    ({"structured_outputs": {"structural_tag": json.dumps(NEW_TAG)}}, {"structural_tag": json.dumps(NEW_TAG)}),
    ({"structured_outputs": {"regex": "a", "json": None, "json_object": False}}, {"regex": "a"}),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, {"json_object": True}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}},
     {"json": SCHEMA}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True,
                                                                 "description": "a person"}}}, {"json": SCHEMA}),
    ({"response_format": LEGACY_TAG}, {"structural_tag": json.dumps(LEGACY_TAG)}),
    ({"response_format": NEW_TAG}, {"structural_tag": json.dumps(NEW_TAG)}),
    # vLLM merges response_format into a structured_outputs that only tunes
    ({"structured_outputs": {"disable_any_whitespace": True}, "response_format": {"type": "json_object"}},
     {"json_object": True, "disable_any_whitespace": True}),
    ({"response_format": {"type": "text"}, "guided_regex": "a"}, {"regex": "a"}),
    ({"structured_outputs": {"regex": "a", "whitespace_pattern": " "}, "guided_whitespace_pattern": " "},
     {"regex": "a", "whitespace_pattern": " "}),  # two spellings that agree
]


@BUILDERS
@pytest.mark.parametrize("body, expected", MAPPINGS, ids=[str(i) for i in range(len(MAPPINGS))])
def test_every_request_form_maps_to_its_params(build, body, expected):
    got = params_of(build, **body)
    assert got == (None if expected is None else StructuredOutputsParams(**expected))
    if got is not None:  # what the engine receives: a valid SamplingParams with exactly that constraint
        params = SamplingParams(max_tokens=8, structured_outputs=got)
        assert params.structured_outputs is got and params.guided_decoding is None


# ---- two constraints and bad values: 400 naming the field -------------------------------------------------------
CONFLICTS = [
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_regex", ["guided_regex", "guided_choice"]),
    ({"guided_json": SCHEMA,
      "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}},
     "guided_json", ["guided_json", "response_format (json_schema)"]),
    ({"guided_grammar": "root ::= 'a'", "structural_tag": "{}"}, "guided_grammar",
     ["guided_grammar", "structural_tag"]),
    ({"structured_outputs": {"json": SCHEMA, "regex": "a"}}, "structured_outputs",
     ["structured_outputs.json", "structured_outputs.regex"]),
    ({"structured_outputs": {"choice": ["a"]}, "guided_choice": ["a"]}, "structured_outputs",
     ["structured_outputs.choice", "guided_choice"]),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs",
     ["structured_outputs.regex", "response_format (json_object)"]),
]


@BUILDERS
@pytest.mark.parametrize("body, param, named", CONFLICTS, ids=[c[1] + str(i) for i, c in enumerate(CONFLICTS)])
def test_two_constraints_are_refused_naming_them(build, body, param, named):
    error = refusal(build, **body)
    assert error.param == param and "only use one kind of structured outputs constraint" in error.message
    assert all(name in error.message for name in named), error.message


BAD = [
    ({"guided_json": "[1, 2]"}, "guided_json"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_json": "[" * 100_000}, "guided_json"),  # too deep for the JSON parser: a 400, not a crash
    ({"guided_choice": []}, "guided_choice"),
    ({"structural_tag": "not json"}, "structural_tag"),
    ({"guided_regex": "a", "guided_decoding_backend": "lm-format-enforcer"}, "guided_decoding_backend"),
    ({"guided_regex": "a", "guided_decoding_backend": "transformers"}, "guided_decoding_backend"),
    ({"guided_regex": "a", "guided_decoding_backend": "xgrammar:fast"}, "guided_decoding_backend"),
    ({"structured_outputs": {"regexp": "a"}}, "structured_outputs"),
    ({"structured_outputs": {"disable_any_whitespace": True}}, "structured_outputs"),  # tuning, no constraint
    ({"structured_outputs": {"choice": "yes"}}, "structured_outputs"),
    ({"structured_outputs": {"choice": ["a", 1]}}, "structured_outputs"),
    ({"structured_outputs": {"json": [1]}}, "structured_outputs"),
    ({"structured_outputs": {"regex": 5}}, "structured_outputs"),
    ({"structured_outputs": {"json_object": "yes"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "disable_fallback": "no"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "backend": "lm-format-enforcer"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "whitespace_pattern": " "}, "guided_whitespace_pattern": "\t"},
     "guided_whitespace_pattern"),
    ({"structured_outputs": {"regex": "a", "backend": "xgrammar"}, "guided_decoding_backend": "guidance"},
     "guided_decoding_backend"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p"}}}, "response_format"),  # no schema
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}, "response_format"),  # no name
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": "{}"}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA, "strict": "y"}}},
     "response_format"),
    ({"response_format": {"type": "structural_tag"}}, "response_format"),
    ({"response_format": {"type": "structural_tag", "structures": [{"begin": "<f>"}], "triggers": ["<f"]}},
     "response_format"),
    ({"response_format": {"type": "structural_tag", "structures": [], "triggers": "<f"}}, "response_format"),
]


@BUILDERS
@pytest.mark.parametrize("body, param", BAD, ids=[f"{p}{i}" for i, (_, p) in enumerate(BAD)])
def test_bad_values_are_refused_naming_the_field(build, body, param):
    error = refusal(build, **body)
    assert error.param == param and param in error.message, error.message


def test_lm_format_enforcer_says_why():
    error = refusal(completion_request, guided_json=SCHEMA, guided_decoding_backend="lm-format-enforcer")
    assert "not supported" in error.message and "transformers 5" in error.message


@pytest.mark.parametrize("body, field", [({"guided_choice": ["a", 1]}, "guided_choice"),
                                         ({"guided_json": [1]}, "guided_json"), ({"guided_regex": 3}, "guided_regex"),
                                         ({"structured_outputs": "json"}, "structured_outputs")])
def test_wrong_types_fail_parsing_naming_the_field(body, field):
    """Types are pydantic's to check (the server answers them with a 400 naming the field, errors.py)."""
    with pytest.raises(ValidationError) as info:
        completion_request(**body)
    assert field in str(info.value)


# ---- the real server: a few 400s, and the mapping reaching the engine's SamplingParams ---------------------------
def error_of(response, field):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"], error
    return error


def post_both(server, **body):
    return (server.post("/v1/completions", {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2, **body}),
            server.post("/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 2, **body}))


def test_server_refuses_two_constraints(server):
    schema_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    for response in post_both(server, guided_json=SCHEMA, response_format=schema_format):
        assert "response_format (json_schema)" in error_of(response, "guided_json")["message"]
    for response in post_both(server, guided_regex="a+", guided_choice=["a"]):
        error_of(response, "guided_regex")


def test_server_refuses_bad_values_by_name(server):
    for response in post_both(server, guided_choice=["a", 1]):  # pydantic's check
        error_of(response, "guided_choice.1")
    for response in post_both(server, guided_choice=["a"], guided_decoding_backend="lm-format-enforcer"):
        assert "transformers 5" in error_of(response, "guided_decoding_backend")["message"]
    for response in post_both(server, response_format={"type": "json_schema", "json_schema": {"name": "p"}}):
        error_of(response, "response_format")
    for response in post_both(server, guided_choice=["a", "b"], use_beam_search=True, n=2):
        error_of(response, "use_beam_search")  # beam search applies no constraint: refused, not ignored


@pytest.fixture(scope="module")
def logging_server(start_server, model_dir):
    """A server that logs every request's SamplingParams (--enable-log-requests: off by default, as vLLM's)."""
    return start_server(["--model", model_dir, "--served-model-name", MODEL_NAME, "--max-model-len",
                         str(MAX_MODEL_LEN), "--disable-uvicorn-access-log", "--enable-log-requests"])


def test_the_constraint_reaches_the_engines_sampling_params(logging_server):
    """The request log is written just before the request goes to the engine (its status is the engine's business:
    with the engine's structured output in place it is a 200 with constrained text)."""
    sent = [("/v1/completions", {"prompt": "x", "guided_choice": ["yes", "no"]}, "choice=['yes', 'no']"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                      "response_format": {"type": "json_object"}}, "json_object=True"),
            ("/v1/completions", {"prompt": "y", "structured_outputs": {"regex": "[0-9]+"},
                                 "guided_decoding_backend": "xgrammar:no-fallback"}, "regex='[0-9]+'")]
    for path, body, _ in sent:
        try:
            logging_server.post(path, {"model": MODEL_NAME, "max_tokens": 2, **body}, timeout=60)
        except Exception:  # noqa: BLE001 - only the log is asserted here
            pass
    deadline = time.monotonic() + 30
    while sum("Received request" in line for line in logging_server.log().splitlines()) < len(sent):
        assert time.monotonic() < deadline, logging_server.log()[-3000:]
        time.sleep(0.1)
    lines = [line for line in logging_server.log().splitlines() if "Received request" in line]
    for (_, _, shown), line in zip(sent, lines):
        assert "structured_outputs=StructuredOutputsParams(" in line and shown in line, line
    assert "backend='xgrammar'" in lines[2] and "disable_fallback=True" in lines[2]


# ---- the wire format between the frontend and the engine core -------------------------------------------------------
@pytest.mark.parametrize("constraint", [
    StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True, backend="xgrammar"),
    StructuredOutputsParams(json=json.dumps(SCHEMA)),
    StructuredOutputsParams(regex=r"\d+", whitespace_pattern=" ", disable_fallback=True),
    StructuredOutputsParams(choice=["yes", "no"]),
    StructuredOutputsParams(grammar='root ::= "a"', backend="guidance", disable_additional_properties=True),
    StructuredOutputsParams(json_object=True),
    StructuredOutputsParams(structural_tag=json.dumps(LEGACY_TAG)),
], ids=["json", "json-text", "regex", "choice", "grammar", "json_object", "structural_tag"])
def test_sampling_params_with_structured_outputs_survive_the_wire(constraint):
    params = SamplingParams(temperature=0.0, max_tokens=8, structured_outputs=constraint)
    request = EngineCoreRequest("r-1", [0, 1, 2], params, eos_token_id=2, arrival_time=1.0)
    back = serial.decode(serial.encode(request)).sampling_params
    assert isinstance(back.structured_outputs, StructuredOutputsParams)
    assert back == params and back.structured_outputs == constraint
    assert back.structured_outputs.kind == constraint.kind and back.guided_decoding is None


def test_guided_decoding_params_travel_as_structured_outputs():
    params = SamplingParams(max_tokens=4, guided_decoding=GuidedDecodingParams(choice=["a", "b"]))
    back = serial.decode(serial.encode(params))
    assert back.guided_decoding is None and back.structured_outputs == StructuredOutputsParams(choice=["a", "b"])
