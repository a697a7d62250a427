"""tool_choice "required" and named functions (tool_choice.py): the JSON schema of each, its 400s, and the
parsing of the constrained output, whole and streamed in every chunking (vLLM's guided tool calling)."""

import copy
import itertools
import json
import random

import jsonschema
import pytest

from pagoda.entrypoints.openai.errors import APIError
from pagoda.entrypoints.openai.protocol import ChatCompletionRequest
from pagoda.entrypoints.openai.serving_chat import ToolStream, apply_tool_calls
from pagoda.entrypoints.openai.tool_choice import (
    NamedToolCallParser,
    RequiredToolCallParser,
    conflicting_constraint,
    forced_tool_parser,
    is_forced,
    json_schema_for_tool_choice,
    named_function,
    tool_calls_finish_reason,
    tool_calls_from_output,
)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
           "required": ["city", "unit"], "additionalProperties": False,
           "$defs": {"Unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME = {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
         {"type": "function", "function": {"name": "ping"}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def named(name):
    return {"type": "function", "function": {"name": name}}


def api_error(call, param):
    with pytest.raises(APIError) as info:
        call()
    assert info.value.status == 400 and info.value.param == param, (info.value.param, info.value.message)
    return info.value.message


# ---- the schemas ----------------------------------------------------------------------------------------------
def test_none_auto_and_absent_give_no_schema():
    for choice in (None, "none", "auto"):
        assert json_schema_for_tool_choice(TOOLS, choice) is None
        assert json_schema_for_tool_choice(None, choice) is None
        assert not is_forced(choice) and forced_tool_parser(choice) is None


def test_named_function_schema_is_its_parameters():
    tools = copy.deepcopy(TOOLS)
    schema = json_schema_for_tool_choice(tools, named("get_weather"))
    assert schema == WEATHER and schema is not tools[0]["function"]["parameters"]
    assert tools == TOOLS  # the request's tools (which the chat template sees) are left as sent
    jsonschema.validate({"city": "Paris", "unit": "celsius"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"city": "Paris", "unit": "kelvin"}, schema)
    # a function without parameters takes an empty object (its arguments are "{}")
    assert json_schema_for_tool_choice(tools, named("ping")) == {"type": "object", "properties": {}}
    assert json_schema_for_tool_choice(tools, {"function": {"name": "get_time"}}) == TIME  # type defaults to function


def test_required_schema_is_an_array_of_named_calls():
    tools = copy.deepcopy(TOOLS)
    schema = json_schema_for_tool_choice(tools, "required")
    assert tools == TOOLS
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    assert schema["$defs"] == WEATHER["$defs"]  # moved to the top, where "#/$defs/Unit" resolves
    choices = schema["items"]["anyOf"]
    assert [c["properties"]["name"] for c in choices] == [{"type": "string", "enum": [n]} for n in
                                                          ("get_weather", "get_time", "ping")]
    assert all(c["required"] == ["name", "parameters"] for c in choices)
    assert "$defs" not in choices[0]["properties"]["parameters"]
    assert choices[2]["properties"]["parameters"] == {"type": "object", "properties": {}}
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}},
                         {"name": "ping", "parameters": {}}, {"name": "get_time", "parameters": {"tz": "UTC"}}],
                        schema)
    for wrong in ([], [{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "kelvin"}}],
                  [{"name": "nope", "parameters": {}}], [{"name": "ping"}], {"name": "ping", "parameters": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    assert json_schema_for_tool_choice(TOOLS, "required", parallel_tool_calls=True) == schema


def test_required_schema_single_call_when_parallel_tool_calls_false():
    schema = json_schema_for_tool_choice(TOOLS, "required", parallel_tool_calls=False)
    assert schema["maxItems"] == 1
    jsonschema.validate([{"name": "ping", "parameters": {}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "ping", "parameters": {}}] * 2, schema)


def test_required_schema_shared_and_conflicting_defs():
    other = {"type": "object", "properties": {"u": {"$ref": "#/$defs/Unit"}, "d": {"$ref": "#/definitions/D"}},
             "$defs": {"Unit": WEATHER["$defs"]["Unit"]}, "definitions": {"D": {"type": "integer"}}}
    tools = TOOLS + [{"type": "function", "function": {"name": "convert", "parameters": other}}]
    schema = json_schema_for_tool_choice(tools, "required")
    assert schema["$defs"] == WEATHER["$defs"] and schema["definitions"] == {"D": {"type": "integer"}}
    jsonschema.validate([{"name": "convert", "parameters": {"u": "celsius", "d": 3}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "convert", "parameters": {"u": "celsius", "d": "x"}}], schema)
    clash = copy.deepcopy(other)
    clash["$defs"]["Unit"] = {"type": "string"}
    tools = TOOLS + [{"type": "function", "function": {"name": "convert", "parameters": clash}}]
    assert "'Unit'" in api_error(lambda: json_schema_for_tool_choice(tools, "required"), "tools")


@pytest.mark.parametrize("tools, choice, param, words", [
    (TOOLS, named("nope"), "tool_choice", "does not match any of the specified tools"),
    (None, "required", "tool_choice", "needs tools"),
    (None, NAMED, "tool_choice", "needs tools"),
    ([], "required", "tool_choice", "needs tools"),
    (TOOLS, "any", "tool_choice", "Invalid value for tool_choice"),
    (TOOLS, "", "tool_choice", "Invalid value for tool_choice"),
    (TOOLS, {"type": "function"}, "tool_choice", "`function`"),
    (TOOLS, {"type": "function", "function": "get_time"}, "tool_choice", "`function`"),
    (TOOLS, {"type": "function", "function": {}}, "tool_choice", "name"),
    (TOOLS, {"type": "function", "function": {"name": ""}}, "tool_choice", "name"),
    (TOOLS, {"type": "custom", "function": {"name": "get_time"}}, "tool_choice", "type"),
    ([{"type": "function"}], "required", "tools", "tools[0]"),
    ([{"type": "function", "function": {"name": 3}}], "required", "tools", "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "required", "tools", "parameters"),
])
def test_tool_choice_errors(tools, choice, param, words):
    assert words in api_error(lambda: json_schema_for_tool_choice(tools, choice), param)


def test_invalid_string_is_refused_even_without_tools():
    api_error(lambda: json_schema_for_tool_choice(None, "sometimes"), "tool_choice")


def test_conflicting_constraints():
    def request(**fields):
        return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                     tool_choice="required", **fields)

    assert conflicting_constraint(request()) is None
    assert conflicting_constraint(request(response_format={"type": "text"})) is None
    assert conflicting_constraint(request(guided_json=None)) is None
    assert conflicting_constraint(request(structured_outputs={"backend": "xgrammar", "json_object": False})) is None
    assert conflicting_constraint(request(guided_decoding_backend="xgrammar")) is None  # tuning only
    assert conflicting_constraint(request(response_format={"type": "json_object"})) == "response_format"
    for name, value in (("guided_json", {"type": "object"}), ("guided_regex", "a+"), ("guided_choice", ["a"]),
                        ("guided_grammar", "root ::= 'a'"), ("structural_tag", "{}"),
                        ("structured_outputs", {"regex": "a"})):
        assert conflicting_constraint(request(**{name: value})) == name


def test_finish_reason():
    assert tool_calls_finish_reason("required", True, "stop") == "tool_calls"
    assert tool_calls_finish_reason("required", True, "length") == "length"
    assert tool_calls_finish_reason("required", False, "stop") == "stop"
    assert tool_calls_finish_reason(NAMED, True, "stop") == "stop"  # OpenAI: named calls end with "stop"
    assert tool_calls_finish_reason(NAMED, True, "length") == "length"
    assert tool_calls_finish_reason("auto", True, "length") == "tool_calls"  # unchanged rule of the auto parsers
    assert tool_calls_finish_reason(None, False, "length") == "length"
    assert tool_calls_finish_reason("required", True, None) is None  # not finished yet


# ---- parsing the output ---------------------------------------------------------------------------------------
def test_named_output_is_the_arguments():
    text = '{"city": "Zürich",\n "unit":"celsius"}'
    calls = tool_calls_from_output(text, NAMED, TOOLS)
    assert len(calls) == 1 and calls[0]["type"] == "function" and calls[0]["id"].startswith("chatcmpl-tool-")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": text}  # as generated (vLLM)
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), WEATHER)
    assert tool_calls_from_output("  \n", NAMED) == []
    assert named_function(NAMED) == "get_weather" and named_function("required") is None
    api_error(lambda: tool_calls_from_output(text, named("nope"), TOOLS), "tool_choice")


def test_required_output_calls():
    text = ' [{"name": "get_weather", "parameters": {"city":"Oslo","unit":"celsius"}},\n' \
           ' {"parameters": {}, "name": "ping"}, {"name": "get_time", "parameters": {"tz": "\\u00e9\\n"}}] '
    calls = tool_calls_from_output(text, "required", TOOLS)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "ping", "get_time"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city": "Oslo", "unit": "celsius"}', "{}",
                                                           '{"tz": "é\\n"}']  # json.dumps form (vLLM's)
    assert len({c["id"] for c in calls}) == 3 and all(c["id"].startswith("chatcmpl-tool-") for c in calls)
    assert [c["function"]["name"] for c in tool_calls_from_output(text, "required", parallel_tool_calls=False)] == [
        "get_weather"]
    for bad in ("", "no json", "[]", '[{"name": "ping"', '{"name": "ping", "parameters": {}}',
                '[{"parameters": {}}]', '[{"name": "ping", "parameters": {}} {"name": "ping"}]'):
        assert tool_calls_from_output(bad, "required") == [], bad


REQUIRED_TEXTS = [
    '[{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}]',
    ' [ {"parameters": {"tz": "a\\"b"}, "name": "get_time"} ,{"name":"ping","parameters":{}}]\n',
    '[{"name": "get_time", "parameters": {"tz": "UTC", "n": [1, 2.5e3, true, null]}}] trailing',
    '[{"name": "get_time", "parameters": {"tz": "UT',  # cut by the length limit
    "plain text, no call",
]
NAMED_TEXTS = ['{"city": "Oslo", "unit": "celsius"}', '\n  {"city":"Zürich"}', "   ", "", "not json"]


def streamed(parser, pieces):
    """(joined content, [[id, name, joined arguments]] by index, number of headers) of `pieces` fed in order."""
    stream = ToolStream(parser, None)
    content, calls, headers = "", {}, 0
    for i, piece in enumerate(pieces):
        delta = stream.feed({"content": piece} if piece else {}, i == len(pieces) - 1)
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            if "id" in call:
                headers += 1
                assert call["type"] == "function" and call["index"] not in calls
                assert call["id"].startswith("chatcmpl-tool-")
                calls[call["index"]] = [call["id"], call["function"]["name"], ""]
            calls[call["index"]][2] += call.get("function", {}).get("arguments", "")
    assert sorted(calls) == list(range(len(calls)))
    return content, [calls[i] for i in sorted(calls)], headers, parser.tools_called_streaming


def chunkings(text, rng):
    """Every chunk size, every cut in two and in three pieces (texts of up to 40 characters), and random cuts."""
    yield [text] if text else [""]
    for size in range(1, len(text) + 1):
        yield [text[i:i + size] for i in range(0, len(text), size)]
    cuts = itertools.combinations(range(1, len(text)), 2) if len(text) <= 40 else ()
    for a in range(1, len(text)):
        yield [text[:a], text[a:]]
    for a, b in cuts:
        yield [text[:a], text[a:b], text[b:]]
    for _ in range(100):
        points = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))) if len(text) > 1 \
            else []
        yield [text[i:j] for i, j in zip([0] + points, points + [len(text)])]


def check_stream_matches_full(choice, text, parallel_tool_calls=None):
    message = {"role": "assistant", "content": text, "tool_calls": []}
    apply_tool_calls(message, forced_tool_parser(choice, parallel_tool_calls), text, "", None)
    rng = random.Random(text)
    for pieces in chunkings(text, rng):
        assert "".join(pieces) == text
        content, calls, headers, called = streamed(forced_tool_parser(choice, parallel_tool_calls), pieces)
        assert content == (message["content"] or ""), pieces
        assert called == bool(message["tool_calls"]) and headers == len(message["tool_calls"]), pieces
        assert [(name, args) for _, name, args in calls] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]], pieces
    return message


@pytest.mark.parametrize("text", NAMED_TEXTS)
def test_named_stream_agrees_with_full_message(text):
    message = check_stream_matches_full(NAMED, text)
    assert bool(message["tool_calls"]) == bool(text.strip())
    if message["tool_calls"]:
        assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == text


@pytest.mark.parametrize("text", [t for t in REQUIRED_TEXTS if "UT" not in t[-3:] and "plain" not in t])
@pytest.mark.parametrize("parallel_tool_calls", [None, False])
def test_required_stream_agrees_with_full_message(text, parallel_tool_calls):
    message = check_stream_matches_full("required", text, parallel_tool_calls)
    assert message["tool_calls"]
    if parallel_tool_calls is False:
        assert len(message["tool_calls"]) == 1
    for call in message["tool_calls"]:
        json.loads(call["function"]["arguments"])


@pytest.mark.parametrize("text", [t for t in REQUIRED_TEXTS if "UT" in t[-3:] or "plain" in t])
@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_required_malformed_output_is_content(text, size):
    message = {"role": "assistant", "content": text, "tool_calls": []}
    apply_tool_calls(message, forced_tool_parser("required"), text, "", None)
    assert message["tool_calls"] == [] and message["content"] == text
    content, calls, _, _ = streamed(forced_tool_parser("required"), [text[i:i + size] for i in range(0, len(text),
                                                                                                        size)])
    assert content == text  # streamed, the text from the array's start on becomes content (headers already sent stay)
    assert all(name == "get_time" for _, name, _ in calls)


def test_parser_classes():
    assert isinstance(forced_tool_parser(NAMED), NamedToolCallParser)
    assert forced_tool_parser(NAMED).name == "get_weather"
    assert isinstance(forced_tool_parser("required"), RequiredToolCallParser)
    assert forced_tool_parser("required", parallel_tool_calls=False).single_call
    assert not forced_tool_parser("required", parallel_tool_calls=True).single_call
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice=NAMED)
    assert forced_tool_parser(NAMED).adjust_request(request) is request and request.skip_special_tokens
