"""The outlines backend (outlines_core): JSON schema, regex and choice, all compiled to a regex DFA.

Behaviour follows vLLM's outlines backend: a JSON schema becomes outlines_core's regex for it
(`whitespace_pattern` is the whitespace allowed between JSON tokens; disable_any_whitespace, when no
pattern is given, allows none), a choice list an alternation of escaped literals. Grammars,
json_object and structural tags are refused (a DFA cannot express them; vLLM refuses them too).

Invariants:
- outlines_core is imported on first use only.
- `check` needs no tokenizer: it rejects regex features outlines' regex engine (Rust regex-automata)
  lacks — backreferences, look-around, '^' anchors and word boundaries — and syntax errors, judged
  with Python's regex parser; the DFA itself is built at compile time.
- A Guide keeps the last MAX_ROLLBACK states: rollback further back than that raises.

Known limits of outlines_core 0.2.14 (what it allows is always valid, but may be less than the
language): from a state where the match may end, a continuation of two or more tokens is dropped
(with choices "yes" and "yes sir", only "yes" can be produced; a one-token continuation such as
"yes!" survives, and alternatives are ordered longest first for that), and a token holding only
part of a UTF-8 character is never allowed inside a repetition.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pagoda.structured_output.backend import Backend, Matcher
from pagoda.structured_output.spec import GrammarSpec, SpecError, one_line
from pagoda.structured_output.vocab import token_bytes

MAX_ROLLBACK = 1024
_REGEX_META = set("\\.+*?()|[]{}^$#&-~")
_sre = re._parser  # type: ignore[attr-defined]
_c = re._constants  # type: ignore[attr-defined]


def escape(text: str) -> str:
    """`text` as a literal in Rust regex syntax."""
    out = []
    for ch in text:
        if ch in _REGEX_META:
            out.append("\\" + ch)
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(f"\\x{{{ord(ch):X}}}")
    return "".join(out)


def _unsupported(parsed: Any) -> str | None:
    for op, value in parsed:
        if op in (_c.GROUPREF, _c.GROUPREF_EXISTS):
            return "backreferences"
        if op in (_c.ASSERT, _c.ASSERT_NOT):
            return "look-around"
        if op == _c.AT and value not in (_c.AT_END, _c.AT_END_STRING):  # a final '$' is harmless
            return "'^' anchors or word boundaries"
        subs: list = []
        if op == _c.BRANCH:
            subs = value[1]
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
            subs = [value[2]]
        elif op == _c.SUBPATTERN:
            subs = [value[3]]
        elif op == getattr(_c, "ATOMIC_GROUP", None):
            subs = [value]
        for sub in subs:
            if found := _unsupported(sub):
                return found
    return None


def check_regex(pattern: str, field: str) -> None:
    """SpecError naming `field` for a regex with a syntax error or a feature outlines lacks."""
    try:
        parsed = _sre.parse(pattern)
    except re.error as exc:
        raise SpecError(field, f"invalid regex ({exc})") from None
    if found := _unsupported(parsed):
        raise SpecError(field, f"outlines does not support {found} in regexes")


def to_regex(spec: GrammarSpec) -> str:
    """The regex whose full matches are the outputs `spec` allows."""
    if spec.kind == "regex":
        return spec.text
    if spec.kind == "choice":  # longest first: outlines' DFA stops at the first alternative that matches
        return "(" + "|".join(escape(c) for c in sorted(spec.choices(), key=len, reverse=True)) + ")"
    if spec.kind == "json":
        from outlines_core import json_schema

        pattern = spec.whitespace_pattern
        if pattern is None and not spec.any_whitespace:
            pattern = ""
        try:
            return json_schema.build_regex_from_schema(spec.text, pattern)
        except (ValueError, TypeError) as exc:
            raise spec.error(f"outlines cannot turn the schema into a regex: {one_line(exc)}") from None
    raise spec.error(f"the outlines backend does not support {spec.kind} constraints; "
                     "use backend 'xgrammar' or 'guidance'")


# JSON-schema keywords outlines_core 0.2 accepts but does not enforce (its regex ignores them), so a
# schema using one is refused rather than served wrong.
_IGNORED_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
                     "minProperties", "maxProperties", "contains", "minContains", "maxContains", "propertyNames",
                     "dependentRequired", "dependentSchemas", "if", "then", "else")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not")


def _ignored_keyword(schema: Any) -> str | None:
    """The first keyword of `_IGNORED_KEYWORDS` used anywhere a subschema can be, or None."""
    if isinstance(schema, list):
        return next(filter(None, map(_ignored_keyword, schema)), None)
    if not isinstance(schema, dict):
        return None
    found = next((key for key in _IGNORED_KEYWORDS if key in schema), None)
    children = [v for key in _SUBSCHEMA_MAPS if isinstance(schema.get(key), dict) for v in schema[key].values()]
    children += [v for key in _SUBSCHEMA_LISTS if isinstance(schema.get(key), list) for v in schema[key]]
    children += [schema[key] for key in _SUBSCHEMAS if key in schema]
    return found or next(filter(None, map(_ignored_keyword, children)), None)


def check(spec: GrammarSpec) -> None:
    """Raise SpecError unless outlines can compile `spec` (short of building its DFA) and enforce it."""
    if spec.kind == "json":
        keyword = _ignored_keyword(spec.schema())
        if keyword is not None:
            raise spec.error(f"outlines does not enforce the JSON-schema keyword {keyword!r}; "
                             "use backend 'xgrammar' or 'guidance' (or 'auto')")
    pattern = to_regex(spec)
    if spec.kind == "regex":
        check_regex(pattern, "regex")
    elif spec.whitespace_pattern is not None:
        check_regex(spec.whitespace_pattern, "whitespace_pattern")


class OutlinesBackend(Backend):
    name = "outlines"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        import outlines_core

        self._oc = outlines_core
        skip = set(eos_token_ids)
        groups: dict[bytes, list[int]] = {}
        for token_id, data in token_bytes(tokenizer).items():
            if token_id < vocab_size and token_id not in skip:
                groups.setdefault(data, []).append(token_id)
        self._vocabulary = outlines_core.Vocabulary(eos_token_ids[0], groups)

    def compile(self, spec: GrammarSpec) -> Any:
        pattern = to_regex(spec)
        try:
            return self._oc.Index(pattern, self._vocabulary)
        except ValueError as exc:
            raise spec.error(f"outlines cannot build an automaton for it: {one_line(exc)}") from None

    def new_matcher(self, compiled: Any) -> Matcher:
        return _OutlinesMatcher(self._oc.Guide(compiled, max_rollback=MAX_ROLLBACK))


class _OutlinesMatcher(Matcher):
    def __init__(self, guide: Any) -> None:
        self._g = guide

    def accept(self, token: int) -> bool:
        try:
            self._g.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self._g.rollback_state(num_tokens)

    def can_end(self) -> bool:
        return bool(self._g.is_finished())

    def fill(self, bitmask: np.ndarray, index: int) -> None:
        row = bitmask[index]
        self._g.write_mask_into(row.ctypes.data, row.size, 4)
