"""llama3_json: Llama 3.1+ JSON tool calls, `{"name": ..., "parameters": {...}}` ("arguments" is
accepted too), several separated by `;`. As vLLM's Llama3JsonToolParser, calls start the output
(after whitespace) or follow `<|python_tag|>` (a special token: served with skip_special_tokens
off); a JSON object without a "name" is plain content. Text after the calls is content (vLLM drops it)."""

from __future__ import annotations

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager


@ToolParserManager.register_module("llama3_json")
class Llama3JsonToolParser(ToolParser):
    start_markers = ("<|python_tag|>",)
    start_chars = "{"
    argument_keys = ("parameters", "arguments")
    markers_are_special_tokens = True

    def _region(self, m, marker, c):
        c = yield from m.ws(c)
        while True:
            if c != "{":
                raise Malformed("expected a call object")
            yield from m.call_object(self.argument_keys)
            c = yield from m.ws(NEXT)
            if c != ";":
                return c
            c = yield from m.ws(NEXT)
