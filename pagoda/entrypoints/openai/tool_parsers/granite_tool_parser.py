"""granite: `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]` (Granite 3.0, a special token)
or `<tool_call>[...]` (Granite 3.1+). As vLLM's GraniteToolParser; a single object without the
array is accepted too."""

from __future__ import annotations

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager


@ToolParserManager.register_module("granite")
class GraniteToolParser(ToolParser):
    start_markers = ("<|tool_call|>", "<tool_call>")
    markers_are_special_tokens = True

    def _region(self, m, marker, c):
        c = yield from m.ws(c)
        if c == "[":
            yield from m.call_array(self.argument_keys)
        elif c == "{":
            yield from m.call_object(self.argument_keys)
        else:
            raise Malformed("expected an array of calls")
        return NEXT
