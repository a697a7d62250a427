"""tool_choice "required" and named functions: the JSON schema that constrains the output to tool calls
(vLLM's `_get_json_schema_from_tool` / `get_json_schema_from_tools`), and the parsers that turn the
constrained output into OpenAI tool calls, whole or streamed.

Invariants:
- `json_schema_for_tool_choice` is the one check of `tool_choice` against `tools`: a value other than
  None, "none", "auto", "required" or {"type": "function", "function": {"name": NAME}} is a 400; "required"
  or a named function without tools is a 400; a name not among the tools is a 400 (each naming
  tool_choice); a tool that is not {"type": "function", "function": {"name": ..., "parameters": {...}}} is
  a 400 naming tools. It never changes the request's tools (vLLM pops `$defs` out of them; here the schema
  is built from copies), so the chat template sees them as sent.
- Named function: the schema is that function's `parameters` (an object with no properties when the tool
  has none: its arguments are then "{}"), and the whole generated text is the call's `arguments`, as
  vLLM passes it (no re-serialization). An output of only whitespace is no call.
- "required": the schema is a JSON array (minItems 1; maxItems 1 when parallel_tool_calls is false) of
  objects {"name": <one tool's name (enum)>, "parameters": <that tool's schema>} (anyOf over the tools);
  each tool's `$defs` (and `definitions`) move to the top of the schema, where their "#/$defs/..."
  references resolve; one name defined differently by two tools is a 400 naming tools (vLLM's rule).
  The array is read by the tool parsers' character machine (`_machine.py`), so the calls' `arguments`
  are each "parameters" re-serialized with json.dumps's separators, and malformed output follows the
  parsers' rules (whole output: no calls, the text stays content; streamed: the text from the array's
  start on becomes content). With parallel_tool_calls false only the first call is returned (vLLM's
  `maybe_filter_parallel_tool_calls`).
- Streaming gives what the whole text gives, however it is cut: one header per call (`index`, `id`
  "chatcmpl-tool-...", `type`, `function.name`) before its argument fragments, which join to exactly the
  non-streamed `arguments`.
- finish_reason (`tool_calls_finish_reason`, vLLM's `resolve_finish_reason`): "tool_calls" for "required"
  when calls were made and the engine stopped on its own ("stop"); a named function keeps the engine's
  reason ("stop", as OpenAI); "length" always stays "length".
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Optional

from pagoda.entrypoints.openai.errors import APIError
from pagoda.entrypoints.openai.tool_parsers import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCalls,
    FunctionCall,
    ToolCall,
    ToolParser,
)
from pagoda.entrypoints.openai.tool_parsers._machine import NEXT
from pagoda.sampling_params import STRUCTURED_OUTPUT_KINDS

_CHOICES = ("none", "auto", "required")
_NAMED_USAGE = 'a named function is {"type": "function", "function": {"name": "my_function"}}'
# Request fields that constrain the output themselves (their "off" values: None, response_format "text"; a
# structured_outputs object constrains when it sets one of the kinds, else it only tunes).
_CONSTRAINT_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structural_tag")
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


# ---- tool_choice and tools ---------------------------------------------------------------------------------
def named_function(tool_choice: Any) -> Optional[str]:
    """The function name of a named tool_choice ({"type": "function", "function": {"name": ...}}), else None."""
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    return None


def is_forced(tool_choice: Any) -> bool:
    """True for tool_choice "required" or a named function: the output is constrained to tool calls."""
    return tool_choice == "required" or isinstance(tool_choice, dict)


def check_tool_choice(tool_choice: Any) -> None:
    """400 (naming tool_choice) unless tool_choice is None, one of _CHOICES or a well-formed named function."""
    if tool_choice is None or (isinstance(tool_choice, str) and tool_choice in _CHOICES):
        return
    if isinstance(tool_choice, str):
        raise APIError(f"Invalid value for tool_choice: {tool_choice!r}; allowed: 'none', 'auto', 'required' or a "
                       f"named function ({_NAMED_USAGE})", 400, "tool_choice")
    kind = tool_choice.get("type", "function")
    function = tool_choice.get("function")
    if kind != "function":
        raise APIError(f"tool_choice type must be 'function', got {kind!r} ({_NAMED_USAGE})", 400, "tool_choice")
    if not isinstance(function, dict):
        raise APIError(f"Invalid value for `function` in tool_choice: {function!r} ({_NAMED_USAGE})", 400,
                       "tool_choice")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(f"tool_choice.function.name must be a non-empty string, got {name!r} ({_NAMED_USAGE})", 400,
                       "tool_choice")


def tool_functions(tools: list[Any]) -> list[tuple[str, Optional[dict]]]:
    """(name, parameters) of each tool; 400 naming tools for a tool that is not a function tool."""
    found = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise APIError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                           f"\"parameters\": {{...}}}}}}", 400, "tools")
        name, parameters = function.get("name"), function.get("parameters")
        if not isinstance(name, str) or not name:
            raise APIError(f"tools[{i}].function.name must be a non-empty string, got {name!r}", 400, "tools")
        if parameters is not None and not isinstance(parameters, dict):
            raise APIError(f"tools[{i}].function.parameters must be a JSON schema object, got "
                           f"{type(parameters).__name__}", 400, "tools")
        found.append((name, parameters))
    return found


def json_schema_for_tool_choice(tools: Optional[list[Any]], tool_choice: Any,
                                parallel_tool_calls: Optional[bool] = None) -> Optional[dict]:
    """The JSON schema the output must follow for this tool_choice (None: "none", "auto" or not given)."""
    check_tool_choice(tool_choice)
    if not is_forced(tool_choice):
        return None
    shown = repr(tool_choice) if isinstance(tool_choice, str) else "a named function"
    if not tools:
        raise APIError(f"tool_choice {shown} needs tools: when using tool_choice, tools must be set (and not be "
                       "empty)", 400, "tool_choice")
    functions = tool_functions(tools)
    name = named_function(tool_choice)
    if name is not None:
        by_name = dict(functions)
        if name not in by_name:
            raise APIError(f"The tool specified in tool_choice ({name!r}) does not match any of the specified tools "
                           f"({', '.join(repr(n) for n, _ in functions)})", 400, "tool_choice")
        return copy.deepcopy(by_name[name]) if by_name[name] else dict(_EMPTY_PARAMETERS)
    return _required_schema(functions, parallel_tool_calls is False)


def _required_schema(functions: list[tuple[str, Optional[dict]]], single_call: bool) -> dict:
    shared: dict[str, dict[str, Any]] = {"$defs": {}, "definitions": {}}
    choices = []
    for name, parameters in functions:
        parameters = copy.deepcopy(parameters) if parameters else dict(_EMPTY_PARAMETERS)
        for key, defs in shared.items():
            for def_name, def_schema in (parameters.pop(key, None) or {}).items():
                if def_name in defs and defs[def_name] != def_schema:
                    raise APIError(f"Tool definition {def_name!r} ({key}) has multiple schemas, which is not "
                                   "supported with tool_choice 'required'", 400, "tools")
                defs[def_name] = def_schema
        choices.append({"properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters},
                        "required": ["name", "parameters"]})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": choices}}
    if single_call:
        schema["maxItems"] = 1
    schema.update({key: defs for key, defs in shared.items() if defs})
    return schema


def conflicting_constraint(request: Any) -> Optional[str]:
    """The field of `request` that constrains the output too (a 400 with tool_choice required / named), or None."""
    response_format = getattr(request, "response_format", None)
    if response_format is not None and getattr(response_format, "type", "text") != "text":
        return "response_format"
    extra = getattr(request, "model_extra", None) or {}

    def given(name: str) -> Any:
        value = getattr(request, name, None)
        return value if value is not None else extra.get(name)

    for name in _CONSTRAINT_FIELDS:
        if given(name) is not None:
            return name
    structured = given("structured_outputs")
    if structured is not None and (not isinstance(structured, dict) or any(
            structured.get(kind) not in (None, False) for kind in STRUCTURED_OUTPUT_KINDS)):
        return "structured_outputs"
    return None


def tool_calls_finish_reason(tool_choice: Any, called: bool, engine_reason: Optional[str]) -> Optional[str]:
    """A choice's finish_reason: "tool_calls" for calls made with "auto" (Pagoda's rule) or with "required" when the
    engine stopped on its own; the engine's own reason otherwise (a named function keeps "stop", as OpenAI)."""
    if not called or engine_reason is None:
        return engine_reason
    if isinstance(tool_choice, dict):
        return engine_reason
    if tool_choice == "required":
        return "tool_calls" if engine_reason == "stop" else engine_reason
    return "tool_calls"


# ---- the parsers -------------------------------------------------------------------------------------------
class RequiredToolCallParser(ToolParser):
    """tool_choice "required": the output is a JSON array of {"name": ..., "parameters": {...}}."""

    start_chars = "["
    argument_keys = ("parameters",)

    def __init__(self, tokenizer: Any = None, single_call: bool = False) -> None:
        super().__init__(tokenizer)
        self.single_call = single_call

    def _region(self, m: Any, marker: str, c: Any) -> Iterator[None]:
        yield from m.call_array(self.argument_keys)  # c is the "[" just read
        return NEXT

    def extract_tool_calls(self, model_output: str, request: Any = None) -> ExtractedToolCalls:
        info = super().extract_tool_calls(model_output, request)
        if self.single_call and info.tools_called:
            info.tool_calls = info.tool_calls[:1]
        return info

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                     *args: Any, **kwargs: Any) -> Optional[DeltaMessage]:
        return self._first_only(super().extract_tool_calls_streaming(previous_text, current_text, delta_text,
                                                                     *args, **kwargs))

    def finish_streaming(self) -> Optional[DeltaMessage]:
        return self._first_only(super().finish_streaming())

    def _first_only(self, delta: Optional[DeltaMessage]) -> Optional[DeltaMessage]:
        if delta is None or not self.single_call:
            return delta
        delta.tool_calls = [call for call in delta.tool_calls if call.index == 0]
        return delta if delta.tool_calls or delta.content else None


class NamedToolCallParser(ToolParser):
    """A named tool_choice: the whole output is the arguments of one call of that function."""

    def __init__(self, tokenizer: Any = None, name: str = "") -> None:
        super().__init__(tokenizer)
        self.name = name
        self._held = ""  # leading whitespace, until the output shows it is a call

    def extract_tool_calls(self, model_output: str, request: Any = None) -> ExtractedToolCalls:
        if not model_output.strip():
            return ExtractedToolCalls(False, [], model_output)
        return ExtractedToolCalls(True, [ToolCall(FunctionCall(self.name, model_output),
                                                  id=self.make_tool_call_id())], None)

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                     *args: Any, **kwargs: Any) -> Optional[DeltaMessage]:
        new = current_text[self._stream_len:] if len(current_text) >= self._stream_len else delta_text
        self._stream_len += len(new)
        if self.current_tool_id >= 0:
            return DeltaMessage(tool_calls=[DeltaToolCall(0, function=DeltaFunctionCall(arguments=new))]) if new \
                else None
        self._held += new
        if not self._held.strip():
            return None
        arguments, self._held = self._held, ""
        self.current_tool_id = 0
        self.prev_tool_call_arr.append({"name": self.name, "arguments": arguments})
        self.streamed_args_for_tool.append(arguments)
        return DeltaMessage(tool_calls=[DeltaToolCall(0, self.make_tool_call_id(), "function",
                                                      DeltaFunctionCall(name=self.name, arguments=arguments))])

    def finish_streaming(self) -> Optional[DeltaMessage]:
        held, self._held = self._held, ""
        return DeltaMessage(content=held) if held else None  # only whitespace came: content, as whole


def forced_tool_parser(tool_choice: Any, parallel_tool_calls: Optional[bool] = None,
                       tokenizer: Any = None) -> Optional[ToolParser]:
    """A new parser instance (one per choice) for tool_choice "required" or a named function; None otherwise."""
    name = named_function(tool_choice)
    if name is not None:
        return NamedToolCallParser(tokenizer, name)
    if tool_choice == "required":
        return RequiredToolCallParser(tokenizer, single_call=parallel_tool_calls is False)
    return None


def tool_calls_from_output(text: str, tool_choice: Any, tools: Optional[list[Any]] = None,
                           parallel_tool_calls: Optional[bool] = None) -> list[dict]:
    """The OpenAI `tool_calls` of a finished constrained output ([]: none, or the output is malformed);
    with `tools`, tool_choice is checked against them first (the 400s of json_schema_for_tool_choice)."""
    if tools is not None:
        json_schema_for_tool_choice(tools, tool_choice, parallel_tool_calls)
    parser = forced_tool_parser(tool_choice, parallel_tool_calls)
    if parser is None:
        return []
    return [call.to_dict() for call in parser.extract_tool_calls(text).tool_calls]
