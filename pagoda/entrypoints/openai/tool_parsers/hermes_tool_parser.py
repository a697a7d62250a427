"""hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one or more (Hermes 2 Pro / 3,
Qwen 2.5 / 3). As vLLM's Hermes2ProToolParser; a call whose closing tag is missing at the end of the
output is kept when its JSON is complete."""

from __future__ import annotations

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager


@ToolParserManager.register_module("hermes")
class Hermes2ProToolParser(ToolParser):
    start_markers = ("<tool_call>",)
    end_marker = "</tool_call>"

    def _region(self, m, marker, c):
        c = yield from m.ws(c)
        if c != "{":
            raise Malformed("expected a call object")
        yield from m.call_object(self.argument_keys)
        c = yield from m.ws(NEXT)
        if c is None:
            return None
        yield from m.expect(c, self.end_marker)
        return NEXT
