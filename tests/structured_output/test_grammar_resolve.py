"""resolve_backend: which backend serves a constraint, and the errors for what none can (vLLM's rules).

No tokenizer is involved: this is the frontend's check.
"""

import json

import pytest

from pagoda.config import StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams as P
from pagoda.structured_output import resolve_backend

PLAIN = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]}
AUTO = StructuredOutputsConfig()


@pytest.mark.parametrize("params", [
    P(json=PLAIN), P(json=json.dumps(PLAIN)), P(regex=r"[a-z]+\d{2}"), P(choice=['say "hi"', "a\\b", "x\ny"]),
    P(grammar='root ::= "a" | "b"'), P(grammar='start: "a" | "b"'), P(json_object=True),
    P(regex="a+", whitespace_pattern=r"[ ]?"),  # whitespace_pattern only shapes JSON: ignored here
    P(structural_tag=json.dumps({"structures": [{"begin": "<f>", "schema": PLAIN, "end": "</f>"}],
                                 "triggers": ["<f"]})),
])
def test_auto_picks_xgrammar_for_what_it_supports(params):
    assert resolve_backend(params, AUTO) == "xgrammar"


@pytest.mark.parametrize("schema", [
    {"type": "integer", "multipleOf": 5},
    {"type": "string", "pattern": "a+", "maxLength": 3},  # xgrammar would drop the length bound
    {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.5}}},  # nested
])
def test_auto_falls_back_to_guidance_for_json_features_xgrammar_lacks(schema):
    assert resolve_backend(P(json=schema), AUTO) == "guidance"


def test_auto_falls_back_to_guidance_for_whitespace_pattern():
    assert resolve_backend(P(json=PLAIN, whitespace_pattern=r"[ \n]*"), AUTO) == "guidance"
    assert resolve_backend(P(json_object=True, whitespace_pattern=" ?"), AUTO) == "guidance"


def test_auto_picks_outlines_when_guidance_lacks_the_feature_too():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}},
              "patternProperties": {"^x": {"type": "integer"}}}
    assert resolve_backend(P(json=schema), AUTO) == "outlines"


@pytest.mark.parametrize("flag_on", ["params", "config"])
def test_disable_fallback_keeps_xgrammars_error(flag_on):
    params = P(json={"type": "integer", "multipleOf": 5}, disable_fallback=flag_on == "params")
    config = StructuredOutputsConfig(disable_fallback=flag_on == "config")
    with pytest.raises(ValueError, match=r"structured_outputs\.json: .*xgrammar does not support: multipleOf"):
        resolve_backend(params, config)


def test_a_named_backend_never_falls_back():
    with pytest.raises(ValueError, match=r"structured_outputs\.json: .*multipleOf"):
        resolve_backend(P(json={"type": "integer", "multipleOf": 5}, backend="xgrammar"), AUTO)
    with pytest.raises(ValueError, match=r"structured_outputs\.whitespace_pattern: xgrammar does not support"):
        resolve_backend(P(json=PLAIN, whitespace_pattern=" ?"), StructuredOutputsConfig(backend="xgrammar"))
    assert resolve_backend(P(json=PLAIN, whitespace_pattern=" ?", backend="outlines"), AUTO) == "outlines"


def test_the_requests_backend_beats_the_engines():
    guidance = StructuredOutputsConfig(backend="guidance")
    assert resolve_backend(P(json=PLAIN), guidance) == "guidance"
    assert resolve_backend(P(json=PLAIN, backend="xgrammar"), guidance) == "xgrammar"
    assert resolve_backend(P(json=PLAIN, backend="auto"), guidance) == "xgrammar"


def test_resolving_again_with_the_answer_gives_the_same_backend():
    for schema in (PLAIN, {"type": "integer", "multipleOf": 5}):
        params = P(json=schema)
        params.backend = resolve_backend(params, AUTO)
        assert resolve_backend(params, AUTO) == params.backend


@pytest.mark.parametrize("backend", ["auto", "xgrammar", "guidance", "outlines"])
@pytest.mark.parametrize("params,field", [
    (dict(json='{"type": "object", '), "json"),
    (dict(json="[1, 2]"), "json"),
    (dict(regex="(ab"), "regex"),
])
def test_errors_name_the_field_for_every_backend(backend, params, field):
    with pytest.raises(ValueError, match=rf"^structured_outputs\.{field}: "):
        resolve_backend(P(backend=backend, **params), AUTO)


@pytest.mark.parametrize("backend", ["auto", "xgrammar", "guidance"])
@pytest.mark.parametrize("grammar", ['root ::= undefined_rule', 'start: "a" | undefined_rule', "   "])
def test_invalid_grammars_name_the_field(backend, grammar):
    with pytest.raises(ValueError, match=r"^structured_outputs\.grammar: "):
        resolve_backend(P(grammar=grammar, backend=backend), AUTO)


@pytest.mark.parametrize("regex", [r"(?=a)b", r"(a)\1"])
def test_regex_features_no_backend_has(regex):
    with pytest.raises(ValueError, match=r"^structured_outputs\.regex: .*xgrammar cannot serve it either"):
        resolve_backend(P(regex=regex), AUTO)


def test_lm_format_enforcer_is_refused_with_the_allowed_list():
    with pytest.raises(ValueError, match=r"lm-format-enforcer' is not supported \(it does not import with "
                                         r"transformers 5\); allowed: \['auto', 'xgrammar', 'guidance', 'outlines'\]"):
        resolve_backend(P(regex="a", backend="lm-format-enforcer"), AUTO)


@pytest.mark.parametrize("params,field", [
    (dict(grammar='start: "a"'), "grammar"),
    (dict(json_object=True), "json_object"),
    (dict(structural_tag=json.dumps({"structures": [], "triggers": []})), "structural_tag"),
    (dict(regex="^abc"), "regex"),
    (dict(regex=r"(?=a)b"), "regex"),
    (dict(regex=r"\bword"), "regex"),
])
def test_outlines_refuses_what_a_dfa_cannot_do(params, field):
    with pytest.raises(ValueError, match=rf"^structured_outputs\.{field}: .*outlines"):
        resolve_backend(P(backend="outlines", **params), AUTO)


def test_outlines_serves_json_regex_and_choice():
    for params in (dict(json=PLAIN), dict(regex=r"abc$"), dict(choice=["a.b", "c|d"])):
        assert resolve_backend(P(backend="outlines", **params), AUTO) == "outlines"


def test_structural_tags():
    legacy = json.dumps({"structures": [{"begin": "<f>", "schema": PLAIN, "end": "</f>"}], "triggers": ["<f"]})
    current = json.dumps({"type": "structural_tag", "format": {
        "type": "triggered_tags", "triggers": ["<f"],
        "tags": [{"type": "tag", "begin": "<f>", "content": {"type": "json_schema", "json_schema": PLAIN},
                  "end": "</f>"}]}})
    assert resolve_backend(P(structural_tag=legacy, backend="guidance"), AUTO) == "guidance"
    assert resolve_backend(P(structural_tag=current), AUTO) == "xgrammar"
    with pytest.raises(ValueError, match=r"^structured_outputs\.structural_tag: guidance takes"):
        resolve_backend(P(structural_tag=current, backend="guidance"), AUTO)
    with pytest.raises(ValueError, match=r"^structured_outputs\.structural_tag: invalid JSON"):
        resolve_backend(P(structural_tag="{"), AUTO)
