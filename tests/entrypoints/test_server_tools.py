"""Tool calling in /v1/chat/completions (--enable-auto-tool-choice --tool-call-parser NAME): the mapping of a
parser's results onto full responses and stream deltas, one real server, and the flags' errors.

The tiny random model never writes a real tool call, so the server test loads a --tool-parser-plugin whose
parser is deterministic on any text: the first word is a call of that name (arguments "{}"), the rest content.
Each response is checked against that parser applied to the text the model really generated, full and
streamed. The mapping of a real format (hermes) is unit-tested on fixed texts cut into every chunk size.

tool_choice "required" and named functions (tool_choice.py) need no flag: their 400s, and the mapping of whatever
the model generated (checked against tool_choice.py's parsing of the same text), run on both servers; structured
output makes the calls' arguments follow the tools' schemas, checked through the openai client.
"""

import json

import jsonschema
import pytest

from openai_server_utils import MODEL_NAME
from pagoda.entrypoints.cli.main import build_parser
from pagoda.entrypoints.openai import cli_args
from pagoda.entrypoints.openai.serving_chat import ToolStream, apply_tool_calls
from pagoda.entrypoints.openai.tool_choice import forced_tool_parser, tool_calls_from_output
from pagoda.entrypoints.openai.tool_parsers import ToolParserManager, get_tool_parser

TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "What time is it?"}], "temperature": 0,
        "max_tokens": 24, "return_token_ids": True, "tools": TOOLS}

FIRST_WORD_PLUGIN = '''
from pagoda.entrypoints.openai.tool_parsers import (
    DeltaFunctionCall, DeltaMessage, DeltaToolCall, ExtractedToolCalls, FunctionCall, ToolCall, ToolParser,
    ToolParserManager)


def split(text):
    """(name, content) : the first word is a call, the rest (as written) content; None: no word."""
    stripped = text.lstrip()
    if not stripped:
        return None
    word = stripped.split()[0]
    end = len(text) - len(stripped) + len(word)
    return word, text[end:]


@ToolParserManager.register_module("test_first_word")
class FirstWord(ToolParser):
    def extract_tool_calls(self, model_output, request=None):
        found = split(model_output)
        if found is None:
            return ExtractedToolCalls(False, [], model_output)
        name, content = found
        return ExtractedToolCalls(True, [ToolCall(FunctionCall(name, "{}"))], content or None)

    def extract_tool_calls_streaming(self, previous_text, current_text, delta_text, *args, request=None, **kw):
        if self.current_tool_id >= 0:
            return DeltaMessage(content=delta_text) if delta_text else None
        self._text = current_text
        stripped = current_text.lstrip()
        if not stripped or not any(c.isspace() for c in stripped):
            return None  # the word may go on: hold it back
        return self._call(current_text)

    def finish_streaming(self):
        if self.current_tool_id >= 0:
            return None
        text = getattr(self, "_text", "")
        if text.strip():
            return self._call(text)  # the output ended inside the word
        return DeltaMessage(content=text) if text else None

    def _call(self, text):
        name, content = split(text)
        self.current_tool_id = 0
        return DeltaMessage(content=content or None, tool_calls=[
            DeltaToolCall(0, self.make_tool_call_id(), "function", DeltaFunctionCall(name=name, arguments="{}"))])
'''


def validated(argv):
    args = build_parser().parse_args(["serve", *argv])
    cli_args.validate_args(args)
    return args


# ---- the mapping, on fixed texts --------------------------------------------------------------------------
HERMES_TEXTS = [
    'Let me check. <tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>',
    '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"x": [1, 2]}}'
    '</tool_call>',
    "No call here, just text with a < sign.",
    '<tool_call>{"name": "broken", "arguments": </tool_call>',
]


def streamed(parser_cls, text, size):
    """(joined content, {index: [id, name, joined arguments]}, number of headers) of `text` cut every `size`."""
    stream = ToolStream(parser_cls(None), None)
    pieces = [text[i:i + size] for i in range(0, len(text), size)] or [""]
    content, calls, headers = "", {}, 0
    for i, piece in enumerate(pieces):
        delta = stream.feed({"content": piece}, i == len(pieces) - 1)
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            if "id" in call:
                headers += 1
                assert call["type"] == "function" and call["index"] not in calls
                calls[call["index"]] = [call["id"], call["function"]["name"], ""]
            calls[call["index"]][2] += call.get("function", {}).get("arguments", "")
    return content, calls, headers, stream.parser.tools_called_streaming


@pytest.mark.parametrize("text", HERMES_TEXTS)
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_hermes_stream_mapping_agrees_with_full_message(text, size):
    parser_cls = get_tool_parser("hermes")
    message = {"role": "assistant", "content": text, "tool_calls": []}
    apply_tool_calls(message, parser_cls(None), text, "", None)
    content, calls, headers, called = streamed(parser_cls, text, size)
    assert content == (message["content"] or "")
    if "broken" not in text:  # a malformed call: streamed as content after its header (a stream cannot take back)
        assert called == bool(message["tool_calls"])
        assert headers == len(message["tool_calls"])
        assert [(n, a) for _, n, a in calls.values()] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    for call in message["tool_calls"]:
        assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
        json.loads(call["function"]["arguments"])


def test_full_message_with_calls_and_echo():
    text = '<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>'
    message = {"role": "assistant", "content": text, "tool_calls": []}
    apply_tool_calls(message, get_tool_parser("hermes")(None), text, "", None)
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "get_time", "arguments": '{"tz": "UTC"}'}
    echoed = {"role": "assistant", "content": "Sure: " + text, "tool_calls": []}
    apply_tool_calls(echoed, get_tool_parser("hermes")(None), text, "Sure: ", None)
    assert echoed["content"] == "Sure: " and len(echoed["tool_calls"]) == 1


def test_stream_keeps_other_delta_fields():
    stream = ToolStream(get_tool_parser("hermes")(None), None)
    assert stream.feed({"reasoning": "r", "reasoning_content": "r"}, False) == {"reasoning": "r",
                                                                                 "reasoning_content": "r"}
    assert stream.feed({"content": "<tool_"}, False) == {}  # a possible marker is held back
    assert stream.feed({}, True) == {"content": "<tool_"}  # ... and released by finish_streaming


# ---- a real server -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tool-plugin") / "first_word_plugin.py"
    path.write_text(FIRST_WORD_PLUGIN)
    return str(path)


@pytest.fixture(scope="module")
def tool_server(start_server, model_dir, plugin_file):
    return start_server(["--model", model_dir, "--served-model-name", "tiny", "--max-model-len", "512",
                         "--disable-log-requests", "--disable-uvicorn-access-log", "--enable-auto-tool-choice",
                         "--tool-parser-plugin", plugin_file, "--tool-call-parser", "test_first_word"])


def chat(server, **extra):
    response = server.post("/v1/chat/completions", json={**CHAT, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def stream_chat(server, **extra):
    response = server.post("/v1/chat/completions", json={**CHAT, "stream": True, **extra})
    assert response.status_code == 200, response.text
    chunks = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    content = "".join(c["delta"].get("content") or "" for c in choices)
    calls = [call for c in choices for call in c["delta"].get("tool_calls", [])]
    finish = [c["finish_reason"] for c in choices if c["finish_reason"]]
    return content, calls, finish


def test_server_parses_tool_calls_full_and_streamed(tool_server, tokenizer):
    body = chat(tool_server)
    choice = body["choices"][0]
    text = tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
    assert text.strip(), "the model generated no word"
    word = text.split()[0]
    message = choice["message"]
    assert [c["function"] for c in message["tool_calls"]] == [{"name": word, "arguments": "{}"}]
    assert message["tool_calls"][0]["id"].startswith("chatcmpl-tool-")
    assert message["content"] == (text[text.index(word) + len(word):] or None)
    assert choice["finish_reason"] == "tool_calls"
    content, calls, finish = stream_chat(tool_server)
    assert content == (message["content"] or "")
    assert [(c["index"], c["type"], c["function"]) for c in calls] == [(0, "function", {"name": word,
                                                                                        "arguments": "{}"})]
    assert finish == ["tool_calls"]


def test_server_tool_choice_none_and_no_tools_are_not_parsed(tool_server):
    for extra in ({"tool_choice": "none"}, {"tools": None}):
        choice = chat(tool_server, **extra)["choices"][0]
        assert choice["message"]["tool_calls"] == [] and choice["finish_reason"] in ("stop", "length")
        content, calls, finish = stream_chat(tool_server, **extra)
        assert calls == [] and content == choice["message"]["content"] and finish == [choice["finish_reason"]]


# ---- tool_choice "required" and named functions ------------------------------------------------------------
NAMED = {"type": "function", "function": {"name": "get_time"}}
# Schemas a random model completes quickly under the constraint (enums and booleans: no open-ended strings).
FORECAST = {"type": "object", "properties": {"unit": {"$ref": "#/$defs/Unit"}, "days": {"enum": [1, 2, 3]}},
            "required": ["unit", "days"], "additionalProperties": False,
            "$defs": {"Unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
ALARM = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"], "additionalProperties": False}
SCHEMAS = {"forecast": FORECAST, "alarm": ALARM}
FORCED_TOOLS = [{"type": "function", "function": {"name": name, "parameters": schema}}
                for name, schema in SCHEMAS.items()]


def forced_body(server, **extra):
    model = MODEL_NAME if server.api_key else "tiny"  # the shared server, or this module's tool server
    return {**CHAT, "model": model, **extra}


@pytest.fixture(params=["server", "tool_server"])
def any_server(request):
    """The shared server (no tool flags: required / named need none, as vLLM) and the auto-tool-choice one."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("extra, param, words", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "does not match"),
    ({"tool_choice": "required", "tools": None}, "tool_choice", "needs tools"),
    ({"tool_choice": NAMED, "tools": None}, "tool_choice", "needs tools"),
    ({"tool_choice": "any"}, "tool_choice", "Invalid value for tool_choice"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice", "name"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "response_format"),
    ({"tool_choice": NAMED, "guided_json": {"type": "object"}}, "tool_choice", "guided_json"),
    ({"tool_choice": "required", "structured_outputs": {"regex": "a+"}}, "tool_choice", "structured_outputs"),
    ({"tool_choice": NAMED, "use_beam_search": True, "temperature": 0}, "tool_choice", "beam search"),
    ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "a", "parameters": {
        "$defs": {"X": {"type": "string"}}}}}, {"type": "function", "function": {"name": "b", "parameters": {
            "$defs": {"X": {"type": "integer"}}}}}]}, "tools", "multiple schemas"),
])
def test_server_forced_tool_choice_errors(any_server, extra, param, words):
    response = any_server.post("/v1/chat/completions", json=forced_body(any_server, **extra))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_server_forced_tool_choice_error_through_openai(server):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(model=MODEL_NAME, messages=CHAT["messages"], tools=TOOLS,
                                                tool_choice={"type": "function", "function": {"name": "nope"}})
    assert info.value.param == "tool_choice" and "nope" in info.value.message


@pytest.mark.parametrize("tool_choice", ["required", NAMED])
def test_server_forced_tool_choice_maps_the_generated_text(any_server, tokenizer, tool_choice):
    """Whatever the model generated is parsed as tool_choice.py parses it, full and streamed alike."""
    body = chat(any_server, **forced_body(any_server, tool_choice=tool_choice))
    choice = body["choices"][0]
    text = tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
    expected = tool_calls_from_output(text, tool_choice, TOOLS)
    message = choice["message"]
    assert [c["function"] for c in message["tool_calls"]] == [c["function"] for c in expected]
    assert all(c["id"].startswith("chatcmpl-tool-") and c["type"] == "function" for c in message["tool_calls"])
    engine_reason = "length" if len(choice["token_ids"]) == CHAT["max_tokens"] else "stop"
    if expected:
        assert message["content"] == (forced_tool_parser(tool_choice).extract_tool_calls(text).content or "")
        # "tool_calls" for required calls when the engine stopped on its own; a named function keeps "stop" (OpenAI)
        assert choice["finish_reason"] == ("tool_calls" if tool_choice == "required" and engine_reason == "stop"
                                           else engine_reason)
    else:  # not a call (what the unconstrained random model writes): the text stays content
        assert message["content"] == text and choice["finish_reason"] == engine_reason
    content, calls, finish = stream_chat(any_server, **forced_body(any_server, tool_choice=tool_choice))
    assert finish == [choice["finish_reason"]]
    joined = {}
    for call in calls:
        if "id" in call:
            assert call["index"] not in joined and call["id"].startswith("chatcmpl-tool-")
            joined[call["index"]] = [call["function"]["name"], ""]
        joined[call["index"]][1] += call["function"].get("arguments", "")
    assert [{"name": n, "arguments": a} for n, a in joined.values()] == [c["function"] for c in expected]
    assert content == (message["content"] or "")


def check_call(call, names):
    assert call.id.startswith("chatcmpl-tool-") and call.type == "function"
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def stream_openai(client, **kwargs):
    """(content, {index: [id, name, arguments]}, finish_reasons) of a streamed chat through the openai client."""
    content, calls, finish = "", {}, []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.id is not None:
                    assert call.index not in calls and call.type == "function"
                    calls[call.index] = [call.id, call.function.name, ""]
                calls[call.index][2] += call.function.arguments or ""
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return content, calls, finish


# Compact JSON (vLLM's disable_any_whitespace, tuning the tool-call constraint): a random model would otherwise
# spend its tokens on whitespace, which a real model does not.
FORCED = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Forecast, please."}], tools=FORCED_TOOLS,
              max_tokens=400, temperature=1.0, seed=7,
              extra_body={"structured_outputs": {"disable_any_whitespace": True}})


@pytest.mark.parametrize("parallel_tool_calls", [None, False])
def test_server_required_calls_follow_the_schemas(server, parallel_tool_calls):
    client = server.client()
    extra = {} if parallel_tool_calls is None else {"parallel_tool_calls": parallel_tool_calls}
    response = client.chat.completions.create(tool_choice="required", **FORCED, **extra)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content in ("", None)
    assert choice.message.tool_calls and (parallel_tool_calls is not False or len(choice.message.tool_calls) == 1)
    for call in choice.message.tool_calls:
        check_call(call, SCHEMAS)
    content, calls, finish = stream_openai(client, tool_choice="required", **FORCED, **extra)
    assert finish == ["tool_calls"] and content == "" and calls
    assert sorted(calls) == list(range(len(calls))) and (parallel_tool_calls is not False or len(calls) == 1)
    for call_id, name, arguments in calls.values():
        assert call_id.startswith("chatcmpl-tool-") and name in SCHEMAS
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_server_named_call_follows_its_schema(server, name):
    client = server.client()
    tool_choice = {"type": "function", "function": {"name": name}}
    choice = client.chat.completions.create(tool_choice=tool_choice, **FORCED).choices[0]
    assert choice.finish_reason == "stop" and choice.message.content in ("", None)  # "stop" for named (OpenAI)
    assert len(choice.message.tool_calls) == 1 and choice.message.tool_calls[0].function.name == name
    check_call(choice.message.tool_calls[0], [name])
    content, calls, finish = stream_openai(client, tool_choice=tool_choice, **FORCED)
    assert finish == ["stop"] and content == "" and list(calls) == [0]
    call_id, streamed_name, arguments = calls[0]
    assert call_id.startswith("chatcmpl-tool-") and streamed_name == name
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


# ---- flags ------------------------------------------------------------------------------------------------
def test_tool_flags(model_dir, plugin_file):
    args = validated([model_dir, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    assert args.enable_auto_tool_choice and args.tool_call_parser == "hermes"
    assert validated([model_dir]).tool_call_parser is None
    assert validated([model_dir, "--tool-parser-plugin", plugin_file, "--enable-auto-tool-choice",
                      "--tool-call-parser", "test_first_word"]).tool_call_parser == "test_first_word"


def test_tool_flag_errors(model_dir, tmp_path):
    with pytest.raises(ValueError, match="--enable-auto-tool-choice requires --tool-call-parser"):
        validated([model_dir, "--enable-auto-tool-choice"])
    names = ", ".join(ToolParserManager.list_tool_parsers())
    with pytest.raises(ValueError, match="--tool-call-parser 'hermes2' is not a registered tool call parser; "
                                         f"choose one of: {names}"):
        validated([model_dir, "--enable-auto-tool-choice", "--tool-call-parser", "hermes2"])
    with pytest.raises(ValueError, match="--tool-parser-plugin .* is not a file"):
        validated([model_dir, "--tool-parser-plugin", str(tmp_path / "none.py")])
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="boom"):
        validated([model_dir, "--tool-parser-plugin", str(bad)])
