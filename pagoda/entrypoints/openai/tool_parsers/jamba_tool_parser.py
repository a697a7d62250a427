"""jamba: `<tool_calls>[{"name": ..., "arguments": {...}}, ...]</tool_calls>` (AI21 Jamba 1.5+;
special tokens, served with skip_special_tokens off). As vLLM's JambaToolParser."""

from __future__ import annotations

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager


@ToolParserManager.register_module("jamba")
class JambaToolParser(ToolParser):
    start_markers = ("<tool_calls>",)
    end_marker = "</tool_calls>"
    markers_are_special_tokens = True

    def _region(self, m, marker, c):
        c = yield from m.ws(c)
        if c != "[":
            raise Malformed("expected an array of calls")
        yield from m.call_array(self.argument_keys)
        c = yield from m.ws(NEXT)
        if c is None:
            return None
        yield from m.expect(c, self.end_marker)
        return NEXT
