"""pythonic: a Python list of calls, `[get_weather(city="SF", unit="c"), other()]` (Llama 3.2 / 3.3 /
4, ToolACE). As vLLM's PythonicToolParser: the list starts the output (after whitespace), names are
plain identifiers, arguments are keywords whose values are Python literals (read with
`ast.literal_eval`: strings, numbers, True/False/None, lists, tuples, dicts), written as JSON.
Text after the list is content. Each argument is sent once its value is complete."""

from __future__ import annotations

import ast
import json
import keyword

from pagoda.entrypoints.openai.tool_parsers._machine import NEXT, Malformed
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager

_MAX_IDENTIFIER = 256


def _identifier(m, c):
    chars = []
    while c is not None and (c.isalnum() or c == "_"):
        chars.append(c)
        if len(chars) > _MAX_IDENTIFIER:
            raise Malformed("identifier too long")
        c = yield
    name = "".join(chars)
    if not name.isidentifier() or keyword.iskeyword(name):
        raise Malformed("not an identifier")
    return name, c


def _literal(m, c):
    """The source text of one Python literal, up to a top-level ',' or ')' (returned as well)."""
    chars: list[str] = []
    depth = 0
    while True:
        if c is None:
            raise Malformed("unterminated argument")
        if depth == 0 and c in ",)":
            return "".join(chars), c
        if c in "'\"":
            quote = c
            chars.append(c)
            c = yield
            if c == quote:
                chars.append(c)
                c = yield
                if c != quote:
                    continue  # an empty string; c is the character after it
                chars.append(c)
                run = 0
                while run < 3:  # a triple-quoted string
                    c = yield
                    if c is None:
                        raise Malformed("unterminated string")
                    chars.append(c)
                    if c == "\\":
                        c = yield
                        if c is None:
                            raise Malformed("unterminated string")
                        chars.append(c)
                        run = 0
                    else:
                        run = run + 1 if c == quote else 0
                c = yield
                continue
            while True:
                if c is None or c == "\n":
                    raise Malformed("unterminated string")
                chars.append(c)
                if c == "\\":
                    c = yield
                    if c is None:
                        raise Malformed("unterminated string")
                    chars.append(c)
                elif c == quote:
                    break
                c = yield
            c = yield
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                raise Malformed("unbalanced brackets")
        chars.append(c)
        c = yield


def _to_json(source: str) -> str:
    try:
        value = ast.literal_eval(source.strip())
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise Malformed(f"not a literal: {exc}") from None


@ToolParserManager.register_module("pythonic")
class PythonicToolParser(ToolParser):
    start_chars = "["

    def _region(self, m, marker, c):
        c = yield from m.ws(NEXT)  # c was the opening "["
        while True:
            name, c = yield from _identifier(m, c)
            if c != "(":
                raise Malformed("expected '('")
            m.call_begin()
            m.call_name(name)
            m.call_args("{")
            c = yield from m.ws(NEXT)
            seen: set[str] = set()
            while c != ")":
                key, c = yield from _identifier(m, c)
                if key in seen:
                    raise Malformed("repeated keyword argument")
                c = yield from m.ws(c)
                if c != "=":
                    raise Malformed("only keyword arguments are supported")
                c = yield from m.ws(NEXT)
                source, c = yield from _literal(m, c)
                value = _to_json(source)
                m.call_args(("" if not seen else ", ") + json.dumps(key, ensure_ascii=False) + ": " + value)
                seen.add(key)
                if c == ",":
                    c = yield from m.ws(NEXT)
            m.call_args("}")
            m.call_end()
            c = yield from m.ws(NEXT)
            if c == ",":
                c = yield from m.ws(NEXT)
                continue
            if c == "]":
                return NEXT
            raise Malformed("expected ',' or ']'")
