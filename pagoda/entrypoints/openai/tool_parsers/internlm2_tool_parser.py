"""internlm: `<|action_start|><|plugin|>{"name": ..., "parameters": {...}}<|action_end|>` (InternLM 2 /
2.5; special tokens, served with skip_special_tokens off). As vLLM's Internlm2ToolParser, which
reads one call; several are read here. "arguments" is accepted for "parameters"."""

from __future__ import annotations

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager


@ToolParserManager.register_module("internlm")
class Internlm2ToolParser(ToolParser):
    start_markers = ("<|action_start|><|plugin|>",)
    end_marker = "<|action_end|>"
    argument_keys = ("parameters", "arguments")
    markers_are_special_tokens = True

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
