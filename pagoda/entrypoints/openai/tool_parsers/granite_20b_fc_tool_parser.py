"""granite-20b-fc: `<function_call> {"name": ..., "arguments": {...}}`, the marker repeated before
each call (granite-20b-functioncalling). As vLLM's Granite20bFCToolParser."""

from __future__ import annotations

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager


@ToolParserManager.register_module("granite-20b-fc")
class Granite20bFCToolParser(ToolParser):
    start_markers = ("<function_call>",)

    def _region(self, m, marker, c):
        c = yield from m.ws(c)
        if c != "{":
            raise Malformed("expected a call object")
        yield from m.call_object(self.argument_keys)
        return NEXT
