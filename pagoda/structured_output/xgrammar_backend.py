"""The xgrammar backend: JSON schema, json_object, regex, choice, EBNF and Lark grammars, structural tags.

Behaviour follows vLLM's xgrammar backend: JSON is compiled with `any_whitespace = not
disable_any_whitespace` and xgrammar's default strict mode (properties the schema does not list are
never generated, so disable_additional_properties changes nothing here). Without any whitespace
xgrammar still writes its default separators ", " and ": " ('{"a": 1}'), as in vLLM; guidance and
outlines write '{"a":1}'. A grammar with a '::=' rule
is EBNF, anything else Lark; choices become an EBNF alternation of JSON-escaped string literals.

Invariants:
- `import xgrammar` (seconds, it loads torch) happens on first use of a function or class here,
  never when pagoda is imported; nothing here imports triton.
- `check` needs no tokenizer and raises SpecError for what `XgrammarBackend.compile` would refuse
  or would compile wrongly (vLLM's list of JSON-schema features xgrammar drops; whitespace_pattern,
  which xgrammar has no option for).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from pagoda.structured_output.backend import Backend, Matcher
from pagoda.structured_output.spec import JSON_KINDS, GrammarSpec, SpecError, grammar_is_lark, one_line

# String formats xgrammar's JSON-schema converter implements (others would be ignored silently).
_STRING_FORMATS = frozenset({
    "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
    "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
})


def _types(schema: dict) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def _pattern_with_length(schema: Any) -> bool:
    return isinstance(schema, dict) and ("pattern" in schema or "format" in schema) and (
        "minLength" in schema or "maxLength" in schema)


def _own_unsupported(node: dict) -> list[str]:
    """vLLM's list of schema features xgrammar cannot honour, for one schema node (not its children)."""
    types, found = _types(node), []
    if types & {"integer", "number"} and "multipleOf" in node:
        found.append("multipleOf")
    if "array" in types:
        found += [k for k in ("uniqueItems", "contains", "minContains", "maxContains") if k in node]
    if "string" in types:
        if "format" in node and node["format"] not in _STRING_FORMATS:
            found.append(f"format {node['format']!r}")
        if _pattern_with_length(node):
            found.append("pattern/format with minLength/maxLength")
    if "object" in types:
        names = node.get("propertyNames")
        if _pattern_with_length(names):
            found.append("propertyNames pattern with length bounds")
        if names is not None and ("properties" in node or "patternProperties" in node
                                  or isinstance(node.get("additionalProperties"), dict)
                                  or node.get("unevaluatedProperties", True) is not True):
            found.append("propertyNames beside other property keywords")
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and ("properties" in node or len(patterns) > 1):
            found.append("patternProperties beside properties or several patterns")
    return found


def unsupported_json_features(schema: Any) -> list[str]:
    """The JSON-schema features in `schema` that xgrammar does not support (empty: all supported)."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            found += [f for f in _own_unsupported(node) if f not in found]
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return found


def choice_ebnf(choices: list[str]) -> str:
    """An EBNF grammar whose language is exactly `choices` (JSON string escapes are EBNF's too)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _grammar(spec: GrammarSpec):
    """The xgrammar Grammar of `spec` (no tokenizer needed); raises what xgrammar raises."""
    import xgrammar as xgr

    kind = spec.kind
    if kind in JSON_KINDS:
        schema = spec.text if kind == "json" else json.dumps(spec.schema())
        return xgr.Grammar.from_json_schema(schema, any_whitespace=spec.any_whitespace)
    if kind == "regex":
        return xgr.Grammar.from_regex(spec.text)
    if kind == "choice":
        return xgr.Grammar.from_ebnf(choice_ebnf(spec.choices()))
    if kind == "grammar":
        return xgr.Grammar.from_lark(spec.text) if grammar_is_lark(spec.text) else xgr.Grammar.from_ebnf(spec.text)
    if kind == "structural_tag":
        return _structural_tag(spec, xgr)
    raise spec.error(f"xgrammar cannot compile a {kind!r} constraint")


def _structural_tag(spec: GrammarSpec, xgr: Any):
    tag = json.loads(spec.text)
    if "structures" not in tag:  # xgrammar's current format: the text itself
        return xgr.Grammar.from_structural_tag(spec.text)
    items = [xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"])
             for s in tag["structures"]]
    return xgr.Grammar.from_structural_tag(items, tag["triggers"])


def check(spec: GrammarSpec) -> None:
    """Raise SpecError unless xgrammar compiles `spec` faithfully."""
    if spec.kind in JSON_KINDS and spec.whitespace_pattern is not None:
        raise SpecError("whitespace_pattern", "xgrammar does not support whitespace_pattern "
                        "(the 'guidance' and 'outlines' backends do)")
    if spec.kind == "json" and (found := unsupported_json_features(spec.schema())):
        raise spec.error(f"the schema uses JSON-schema features xgrammar does not support: {', '.join(found)}")
    if spec.kind == "regex" and "\x00" in spec.text:
        raise spec.error("the regex contains a NUL character")
    try:
        _grammar(spec)
    except SpecError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise spec.error(f"xgrammar cannot compile it: {one_line(exc)}") from None


class XgrammarBackend(Backend):
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=eos_token_ids)
        # The manager caches compiled grammars itself; xgrammar's own cache would hold a second copy.
        self._compiler = xgr.GrammarCompiler(info, max_threads=min(8, os.cpu_count() or 1), cache_enabled=False)

    def compile(self, spec: GrammarSpec) -> Any:
        try:
            return self._compiler.compile_grammar(_grammar(spec))
        except SpecError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise spec.error(f"xgrammar cannot compile it: {one_line(exc)}") from None

    def new_matcher(self, compiled: Any) -> Matcher:
        return _XgrammarMatcher(self._xgr.GrammarMatcher(compiled))


_BATCH_MATCHER = None  # one xgrammar.BatchGrammarMatcher (its thread pool) per process, made on first use


def fill_threads() -> int:
    """Threads of the batch fill: PAGODA_GRAMMAR_THREADS when set (> 0), else every core but the engine's own thread
    (the fill is the host's longest job in a structured step; fewer threads leave the engine thread a core of its own
    where cores are hyperthreads: an A/B knob until measured, docs/benchmarks.md session 17)."""
    text = os.environ.get("PAGODA_GRAMMAR_THREADS", "0") or "0"
    configured = int(text) if text.strip().isdigit() else -1
    if configured < 0:
        raise ValueError(f"PAGODA_GRAMMAR_THREADS must be an integer >= 0 (0: every core but one), got {text!r}")
    return configured or max(1, min(32, (os.cpu_count() or 2) - 1))


def _batch_fill(matchers: list["_XgrammarMatcher"], bitmask: np.ndarray, rows: list[int]) -> None:
    """xgrammar's multi-threaded fill of many rows (it releases the GIL)."""
    global _BATCH_MATCHER
    if _BATCH_MATCHER is None:
        import xgrammar

        _BATCH_MATCHER = xgrammar.BatchGrammarMatcher(max_threads=fill_threads())
    _BATCH_MATCHER.batch_fill_next_token_bitmask([m._m for m in matchers], bitmask, rows)


def _batch_accept(matchers: list["_XgrammarMatcher"], tokens: list[int]) -> list[bool]:
    """xgrammar's batch accept, as one call: it releases the GIL while it runs (about 3 ms for 1000 rows on the
    H200 host). Its result is a tvm-ffi array whose every element read is a call of its own that drops and
    retakes the GIL, which the busy engine thread then keeps for up to a switch interval; so the array is asked
    once whether it holds a refusal (one call, answered by xgrammar's side) and read only when it does (docs/
    benchmarks.md, session 18: threads over chunks of rows, each read element by element, were slower alone and
    about three times slower inside the engine)."""
    import xgrammar

    raw = [m._m for m in matchers]
    core = getattr(getattr(xgrammar, "matcher", None), "_core", None)
    accept = getattr(getattr(core, "BatchGrammarMatcher", None), "batch_accept_token", None)
    if accept is None or not all(hasattr(m, "_handle") for m in raw[:1]):  # another xgrammar layout: its own API
        return xgrammar.BatchGrammarMatcher.batch_accept_token(raw, tokens)
    result = accept([m._handle for m in raw], tokens, False)
    if 0 not in result:
        return [True] * len(raw)
    return [bool(ok) for ok in list(result)]


class _XgrammarMatcher(Matcher):
    batch_fill = staticmethod(_batch_fill)
    batch_accept = staticmethod(_batch_accept)
    # xgrammar allows its stop tokens (our EOS ids) exactly where the grammar is complete: reading that bit spares
    # finish_batch_rows an is_completed() call per row, each dropping and retaking the GIL (tested on random walks)
    fill_marks_eos = True

    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def accept(self, token: int) -> bool:
        return bool(self._m.accept_token(token))

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self._m.rollback(num_tokens)

    def can_end(self) -> bool:
        return bool(self._m.is_completed())

    def fill(self, bitmask: np.ndarray, index: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, index)
