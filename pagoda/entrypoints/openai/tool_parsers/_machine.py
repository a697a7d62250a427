"""The character-at-a-time machine behind every parser (whole outputs and streams alike).

`Machine.feed(ch)` takes one character (None: the output ended) and appends events:
("content", text), ("call", index, id, name), ("args", index, fragment). The reading code is a
generator (`c = yield` reads the next character), so a recursive-descent reader stops wherever a
chunk ends and resumes with the next one. Readers take the current character and return either
NEXT (everything consumed) or the one character they read past their end, for the caller.

A reader raises Malformed when the text cannot be a call; `feed` then emits the region's raw text
as content and goes back to text mode with the offending character.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Optional

NEXT: Any = object()  # "no character pending: read the next one"

_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# json.dumps(ensure_ascii=False) escapes exactly these characters.
_JSON_ESCAPE = {chr(i): "\\u%04x" % i for i in range(0x20)}
_JSON_ESCAPE.update({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"})
_HEX = set("0123456789abcdefABCDEF")


class Malformed(Exception):
    pass


def _drop(_: str) -> None:
    pass


Gen = Iterator[None]


class Machine:
    def __init__(self, parser: Any):
        self.parser = parser
        self.events: list[tuple] = []
        self._taken = 0
        self.failed = False
        self.n_calls = 0
        self._ws: list[str] = []  # whitespace held back: content only if non-space text follows
        self._after_call = False  # whitespace right after a call is not content
        self._region: Optional[list[str]] = None  # raw text of the open call region
        self._call: Optional[dict[str, Any]] = None
        self._done = False
        self._gen = self._start()
        next(self._gen)

    # -- driving ---------------------------------------------------------------------------------

    def take_events(self) -> list[tuple]:
        events = self.events[self._taken :]
        self._taken = len(self.events)
        return events

    def feed(self, ch: Optional[str]) -> None:
        if self._done:
            return
        if self._region is not None and ch is not None:
            self._region.append(ch)
        try:
            self._gen.send(ch)
        except StopIteration:
            self._done = True
            return
        except Malformed:
            self._recover(ch)
            return
        if ch is None:  # the reader wanted more after the end of the output
            self._recover(None)

    def _recover(self, ch: Optional[str]) -> None:
        region = self._region or []
        if ch is not None and region:
            region = region[:-1]  # the offending character is read again in text mode
        self._region = None
        self._call = None
        self.failed = True
        raw = "".join(region)
        if raw:
            self._content_raw(raw)
        self._gen = self._text(NEXT)
        next(self._gen)
        self.feed(ch)

    # -- content ---------------------------------------------------------------------------------

    def _emit_content(self, text: str) -> None:
        if self.events and self.events[-1][0] == "content" and len(self.events) > self._taken:
            self.events[-1] = ("content", self.events[-1][1] + text)
        else:
            self.events.append(("content", text))

    def _content_char(self, ch: str) -> None:
        if ch in _WS or ch.isspace():
            if not self._after_call:
                self._ws.append(ch)
            return
        if self._ws:
            self._emit_content("".join(self._ws))
            self._ws = []
        self._after_call = False
        self._emit_content(ch)

    def _content_raw(self, text: str) -> None:
        self._ws = []
        self._after_call = False
        self._emit_content(text)

    # -- text mode -------------------------------------------------------------------------------

    def _start(self) -> Gen:
        c = yield
        start_chars = self.parser.start_chars
        if start_chars:
            while c is not None and c.isspace():
                self._ws.append(c)
                c = yield
            if c is not None and c in start_chars:
                self._begin_region(c)
                c = yield from self.parser._region(self, "", c)
                self._end_region()
        yield from self._text(c)

    def _text(self, c: Any) -> Gen:
        markers = self.parser.start_markers
        pending = ""
        while True:
            if c is NEXT:
                c = yield
            if c is None:
                for ch in pending:
                    self._content_char(ch)
                if self._ws:
                    self._emit_content("".join(self._ws))
                    self._ws = []
                return
            pending += c
            c = NEXT
            while pending:
                if pending in markers:
                    self._begin_region(pending)
                    c = yield from self.parser._region(self, pending, NEXT)
                    self._end_region()
                    pending = ""
                    break
                if any(marker.startswith(pending) for marker in markers):
                    break
                self._content_char(pending[0])
                pending = pending[1:]

    def _begin_region(self, opening: str) -> None:
        self._region = ["".join(self._ws), opening]
        self._ws = []

    def _end_region(self) -> None:
        self._region = None
        self._after_call = True

    # -- calls -----------------------------------------------------------------------------------

    def call_begin(self) -> None:
        self._call = {"index": None, "name": None, "pending": [], "has_args": False}

    def call_name(self, name: Any) -> None:
        call = self._call
        if call is None or call["name"] is not None or not isinstance(name, str) or not name.strip():
            raise Malformed("bad or repeated name")
        call["name"] = name
        call["index"] = self.n_calls
        self.n_calls += 1
        self.events.append(("call", call["index"], self.parser.make_tool_call_id(), name))
        for fragment in call["pending"]:
            self.events.append(("args", call["index"], fragment))
        call["pending"] = []

    def call_args(self, fragment: str) -> None:
        call = self._call
        assert call is not None
        call["has_args"] = True
        if call["index"] is None:
            call["pending"].append(fragment)
        else:
            self.events.append(("args", call["index"], fragment))

    def call_end(self) -> None:
        call = self._call
        if call is None or call["name"] is None:
            raise Malformed("a call without a name")
        if not call["has_args"]:
            self.call_args("{}")
        self._call = None

    # -- readers (generators) --------------------------------------------------------------------

    def ws(self, c: Any) -> Iterator[None]:
        """Skip whitespace; returns the first other character (None at the end of the output)."""
        while c is NEXT or (c is not None and c in _WS):
            c = yield
        return c

    def expect(self, c: Any, text: str) -> Iterator[None]:
        """Read exactly `text`, whose first character is c (NEXT: read it)."""
        for i, want in enumerate(text):
            if i > 0 or c is NEXT:
                c = yield
            if c != want:
                raise Malformed(f"expected {text!r}")

    def call_object(self, keys: tuple[str, ...]) -> Iterator[None]:
        """A call object {"name": ..., <one of keys>: ...}; its "{" was just read."""
        self.call_begin()
        c = yield from self.ws(NEXT)
        seen: set[str] = set()
        if c != "}":
            while True:
                if c != '"':
                    raise Malformed("expected a key")
                key = yield from self.string(_drop)
                if key in seen or (key in keys and seen.intersection(keys)):
                    raise Malformed("repeated key")
                seen.add(key)
                c = yield from self.ws(NEXT)
                if c != ":":
                    raise Malformed("expected ':'")
                c = yield from self.ws(NEXT)
                if key == "name":
                    if c != '"':
                        raise Malformed("the name is not a string")
                    name = yield from self.string(_drop)
                    self.call_name(name)
                    c = NEXT
                elif key in keys:
                    c = yield from self.value(c, self.call_args)
                else:
                    c = yield from self.value(c, _drop)
                c = yield from self.ws(c)
                if c == ",":
                    c = yield from self.ws(NEXT)
                    continue
                if c == "}":
                    break
                raise Malformed("expected ',' or '}'")
        self.call_end()

    def call_array(self, keys: tuple[str, ...]) -> Iterator[None]:
        """A JSON array of call objects; its "[" was just read."""
        c = yield from self.ws(NEXT)
        while True:
            if c != "{":
                raise Malformed("expected a call object")
            yield from self.call_object(keys)
            c = yield from self.ws(NEXT)
            if c == ",":
                c = yield from self.ws(NEXT)
                continue
            if c == "]":
                return
            raise Malformed("expected ',' or ']'")

    def value(self, c: Any, sink: Callable[[str], None]) -> Iterator[None]:
        """Any JSON value starting at c, written to sink re-serialized as json.dumps would.
        Returns NEXT, or the character read past a number."""
        if c == "{":
            sink("{")
            c = yield from self.ws(NEXT)
            first = True
            if c != "}":
                while True:
                    if c != '"':
                        raise Malformed("expected a key")
                    if not first:
                        sink(", ")
                    first = False
                    yield from self.string(sink)
                    c = yield from self.ws(NEXT)
                    if c != ":":
                        raise Malformed("expected ':'")
                    sink(": ")
                    c = yield from self.ws(NEXT)
                    c = yield from self.value(c, sink)
                    c = yield from self.ws(c)
                    if c == ",":
                        c = yield from self.ws(NEXT)
                        continue
                    if c == "}":
                        break
                    raise Malformed("expected ',' or '}'")
            sink("}")
            return NEXT
        if c == "[":
            sink("[")
            c = yield from self.ws(NEXT)
            first = True
            if c != "]":
                while True:
                    if not first:
                        sink(", ")
                    first = False
                    c = yield from self.value(c, sink)
                    c = yield from self.ws(c)
                    if c == ",":
                        c = yield from self.ws(NEXT)
                        continue
                    if c == "]":
                        break
                    raise Malformed("expected ',' or ']'")
            sink("]")
            return NEXT
        if c == '"':
            yield from self.string(sink)
            return NEXT
        if c is not None and c in "-0123456789":
            chars = [c]
            while True:
                c = yield
                if c is None or c not in "0123456789+-.eE":
                    break
                chars.append(c)
            number = "".join(chars)
            if not _NUMBER.fullmatch(number):
                raise Malformed("bad number")
            sink(number)
            return c
        for literal in ("true", "false", "null"):
            if c == literal[0]:
                yield from self.expect(c, literal)
                sink(literal)
                return NEXT
        raise Malformed("expected a JSON value")

    def string(self, sink: Callable[[str], None]) -> Iterator[None]:
        """A JSON string whose opening quote was just read; returns it decoded. Raw control
        characters are accepted (models write raw newlines); lone surrogates stay escaped."""
        sink('"')
        out: list[str] = []
        high: Optional[int] = None
        while True:
            c = yield
            if c is None:
                raise Malformed("unterminated string")
            code: Optional[int] = None
            if c == '"':
                if high is not None:
                    sink("\\u%04x" % high)
                sink('"')
                return "".join(out)
            if c == "\\":
                e = yield
                if e in _SIMPLE_ESCAPES:
                    ch = _SIMPLE_ESCAPES[e]
                elif e == "u":
                    digits = []
                    for _ in range(4):
                        h = yield
                        if h is None or h not in _HEX:
                            raise Malformed("bad \\u escape")
                        digits.append(h)
                    code = int("".join(digits), 16)
                    if 0xD800 <= code < 0xDC00:
                        if high is not None:
                            sink("\\u%04x" % high)
                        high = code
                        continue
                    if 0xDC00 <= code < 0xE000:
                        if high is not None:
                            ch = chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00))
                            high = None
                        else:
                            sink("\\u%04x" % code)
                            continue
                    else:
                        ch = chr(code)
                else:
                    raise Malformed("bad escape")
            else:
                ch = c
            if high is not None:
                sink("\\u%04x" % high)
                high = None
            out.append(ch)
            sink(_JSON_ESCAPE.get(ch, ch))
