"""The guidance backend (llguidance): JSON schema, json_object, regex, choice, Lark and EBNF grammars,
structural tags in the {"structures", "triggers"} form.

Behaviour follows vLLM's guidance backend: JSON is compiled with `whitespace_flexible = not
disable_any_whitespace`; `whitespace_pattern` overrides the whitespace allowed between JSON tokens
(vLLM's guidance options); disable_additional_properties adds `"additionalProperties": false` to every
object schema that lists properties and does not say otherwise. EBNF is turned into Lark by llguidance.
A structural tag's schemas go to llguidance.StructTag as schemas with their options inline (vLLM
passes them serialized, which StructTag reads as a schema without constraints).

Invariants:
- llguidance is imported on first use only.
- An LLMatcher enters a permanent error state when it consumes a disallowed token, so a token is
  validated before it is consumed: a matcher here never errs from a token choice.
- One LLMatcher per compiled spec is the template; every request works on a `deep_copy` of it
  (construction parses the grammar, the copy is cheap).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from pagoda.structured_output.backend import Backend, Matcher
from pagoda.structured_output.spec import JSON_KINDS, GrammarSpec, SpecError, one_line

# Keywords whose value maps names to subschemas, and keywords whose value is a subschema (or a list).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMAS = ("items", "prefixItems", "additionalItems", "unevaluatedItems", "contains", "additionalProperties",
               "unevaluatedProperties", "propertyNames", "not", "if", "then", "else", "allOf", "anyOf", "oneOf")


def has_unsupported_json_features(schema: Any) -> bool:
    """vLLM's check: llguidance does not implement patternProperties (auto then picks outlines)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "patternProperties" in node:
                return True
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(node)
    return False


def forbid_additional_properties(schema: Any) -> Any:
    """A copy of `schema` where object schemas listing properties default to additionalProperties false."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key in _SCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
        stack.extend(node[key] for key in _SUBSCHEMAS if isinstance(node.get(key), (dict, list)))
        listed = isinstance(node.get("properties"), dict) or isinstance(node.get("patternProperties"), dict)
        if listed and "additionalProperties" not in node:
            node["additionalProperties"] = False
    return schema


def _json_grammar(spec: GrammarSpec, schema: Any) -> str:
    import llguidance

    if not spec.additional_properties:
        schema = forbid_additional_properties(schema)
    overrides = {"whitespace_pattern": spec.whitespace_pattern} if spec.whitespace_pattern is not None else None
    return llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": spec.any_whitespace}, overrides=overrides)


def _tag_schema(spec: GrammarSpec, schema: Any) -> dict:
    """A structural tag's schema, its options inline: StructTag reads a dict (or any text starting with
    '{') as a JSON schema, so a serialized grammar would be taken for an unconstrained schema."""
    if not isinstance(schema, dict):
        raise spec.error("every structure's schema must be a JSON object")
    if not spec.additional_properties:
        schema = forbid_additional_properties(schema)
    return {**schema, "x-guidance": {**schema.get("x-guidance", {}), "whitespace_flexible": spec.any_whitespace}}


def serialize(spec: GrammarSpec) -> str:
    """The llguidance grammar text of `spec`; SpecError when it cannot be expressed."""
    import llguidance

    kind = spec.kind
    try:
        if kind in JSON_KINDS:
            return _json_grammar(spec, spec.schema())
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.text)
        if kind == "choice":
            return llguidance.grammar_from("choice", spec.text)
        if kind == "grammar":
            return llguidance.grammar_from("grammar", spec.text)
        if kind == "structural_tag":
            return _structural_tag(spec, llguidance)
    except SpecError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise spec.error(f"guidance cannot compile it: {one_line(exc)}") from None
    raise spec.error(f"guidance cannot compile a {kind!r} constraint")


def _structural_tag(spec: GrammarSpec, llguidance: Any) -> str:
    tag = json.loads(spec.text)
    if "structures" not in tag or "triggers" not in tag:
        raise spec.error("guidance takes structural tags as {\"structures\": [...], \"triggers\": [...]} only")
    tags = []
    for item in tag["structures"]:
        trigger = next((t for t in tag["triggers"] if item["begin"].startswith(t)), None)
        if trigger is None:
            raise spec.error(f"begin {item['begin']!r} starts with none of the triggers {tag['triggers']}")
        tags.append(llguidance.StructTag(trigger=trigger, begin=item["begin"], end=item["end"],
                                         grammar=_tag_schema(spec, item["schema"])))
    if not tags:
        raise spec.error("no structures given")
    return llguidance.StructTag.to_grammar(tags)


def check(spec: GrammarSpec) -> None:
    """Raise SpecError unless llguidance accepts `spec` (checked without a tokenizer)."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(serialize(spec), None)
    if error:
        raise spec.error(f"guidance cannot compile it: {one_line(error)}")


class GuidanceBackend(Backend):
    name = "guidance"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        import llguidance.hf

        self._vocab_size = vocab_size
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids)

    def compile(self, spec: GrammarSpec) -> Any:
        import llguidance

        template = llguidance.LLMatcher(self._tokenizer, serialize(spec), log_level=0)
        if template.is_error():
            raise spec.error(f"guidance cannot compile it: {one_line(template.get_error())}")
        return template

    def new_matcher(self, compiled: Any) -> Matcher:
        return _GuidanceMatcher(compiled.deep_copy())


class _GuidanceMatcher(Matcher):
    # No batch_fill: llguidance's fill_next_token_bitmask_par was slower than row by row in W2 on the H200
    # (9,988 vs 11,072 output tokens/s) and disagreed with the row-by-row fill once in 40 steps at 256 rows
    # there (scripts/bench_grammar_bitmask.py), so it stays off until that is understood.
    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def accept(self, token: int) -> bool:
        return self._m.validate_tokens([token]) == 1 and bool(self._m.consume_token(token))

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self._m.rollback(num_tokens)

    def can_end(self) -> bool:
        return bool(self._m.is_accepting())

    def fill(self, bitmask: np.ndarray, index: int) -> None:
        row = bitmask[index]
        self._m.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)

    def error(self) -> str | None:
        return self._m.get_error() or None
