"""mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (Mistral 7B v0.3, Nemo, Small),
and the newer `[TOOL_CALLS]name{...}` / `[TOOL_CALLS]name[ARGS]{...}` (tokenizer v11+), one call per
marker. As vLLM's MistralToolParser, ids are 9 letters and digits (mistral_common's rule), and
[TOOL_CALLS] is a special token (served with skip_special_tokens off)."""

from __future__ import annotations

import random
import re
import string

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager

_ALPHANUMERIC = string.ascii_letters + string.digits
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_NAME_CHARS = set(_ALPHANUMERIC + "_.-[]ARGS \t\n")
_rng = random.SystemRandom()


def mistral_tool_call_id() -> str:
    return "".join(_rng.choice(_ALPHANUMERIC) for _ in range(9))


@ToolParserManager.register_module("mistral")
class MistralToolParser(ToolParser):
    start_markers = ("[TOOL_CALLS]",)
    markers_are_special_tokens = True

    def make_tool_call_id(self) -> str:
        return mistral_tool_call_id()

    def _region(self, m, marker, c):
        c = yield from m.ws(c)
        if c == "[":
            yield from m.call_array(self.argument_keys)
            return NEXT
        name = []
        while c is not None and c != "{":
            if c not in _NAME_CHARS or len(name) > 256:
                raise Malformed("not a function name")
            name.append(c)
            c = yield
        text = "".join(name).strip()
        if text.endswith("[ARGS]"):
            text = text[: -len("[ARGS]")].rstrip()
        if c is None or not _NAME.fullmatch(text):
            raise Malformed("not a function name")
        m.call_begin()
        m.call_name(text)
        c = yield from m.value(c, m.call_args)
        m.call_end()
        return c
