"""The request fields that constrain a generation's output, as the one StructuredOutputsParams the engine takes
(completions and chat alike, vLLM's fields and rules).

| request field                                                    | StructuredOutputsParams            |
| ---------------------------------------------------------------- | ---------------------------------- |
| guided_json (a JSON schema: an object, or its JSON text)         | json                               |
| guided_regex / guided_grammar                                    | regex / grammar                    |
| guided_choice (a non-empty list of strings)                      | choice                             |
| structural_tag (JSON text of an xgrammar structural tag)         | structural_tag                     |
| structured_outputs (an object with StructuredOutputsParams' keys) | those keys                         |
| response_format {"type": "json_object"}                           | json_object=True                   |
| response_format {"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}} | json=schema |
| response_format {"type": "structural_tag", "structures", "triggers"} (or "format") | structural_tag=its JSON text |
| guided_whitespace_pattern                                        | whitespace_pattern                 |
| guided_decoding_backend ("xgrammar", vLLM 0.8's "xgrammar:no-fallback,...") | backend (and the flags) |

Invariants:
- One constraint per request (vLLM's rule): two of the fields above that constrain (or two kinds inside
  structured_outputs) are a 400 naming them all; response_format "text" constrains nothing. A
  structured_outputs object without a kind of its own only tunes the constraint another field gives (vLLM
  merges response_format into it); a tuning setting given two ways must agree. The constraint tool_choice
  "required" / a named function implies (`forced`) counts as one too, and the request's tuning applies to it.
- Every bad value is an APIError(400, param=<the field>) raised before the request is tokenized, and what comes
  back is valid on its own (StructuredOutputsParams' checks ran); whether a backend can compile it is the
  engine's check. No constraint gives None: guided_decoding_backend or guided_whitespace_pattern alone change
  nothing (vLLM's `from_optional`), but their values are still checked.
- JSON text (guided_json, structural_tag) must parse as a JSON object; text nested too deep to parse is a 400.
- Backends are those of config.STRUCTURED_OUTPUT_ENGINE_BACKENDS; 'lm-format-enforcer' is a 400 (it does not
  import with transformers 5).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pagoda.config import STRUCTURED_OUTPUT_ENGINE_BACKENDS, split_backend_options
from pagoda.entrypoints.openai.errors import APIError
from pagoda.sampling_params import STRUCTURED_OUTPUT_KINDS, StructuredOutputsParams

# Fields read here (and so left out of serving_engine's field-by-field SamplingParams mapping).
STRUCTURED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structural_tag",
                     "structured_outputs", "guided_decoding_backend", "guided_whitespace_pattern")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema", "structural_tag")
_PARAM_KEYS = tuple(f.name for f in dataclasses.fields(StructuredOutputsParams))
_TUNING_KEYS = tuple(k for k in _PARAM_KEYS if k not in STRUCTURED_OUTPUT_KINDS)
ONE_KIND = "You can only use one kind of structured outputs constraint (vLLM's rule)"


def structured_outputs_of(request: Any, forced: tuple[str, StructuredOutputsParams] | None = None
                          ) -> StructuredOutputsParams | None:
    """The request's output constraint (None: it has none); APIError 400 naming the field for a bad one.
    `forced`: (field, constraint) that the server derived from another field (tool_choice "required" or a
    named function): it counts as one of the request's constraints, and the request's tuning applies to it."""
    constraints: list[tuple[str, str, Any]] = []  # (field as shown, StructuredOutputsParams key, value)
    if forced is not None:
        constraints.append((forced[0], forced[1].kind, getattr(forced[1], forced[1].kind)))
    tuning: dict[str, tuple[Any, str]] = {}  # key -> (value, field it came from)
    given = getattr(request, "structured_outputs", None)
    if given is not None:
        _structured_outputs_object(given, constraints, tuning)
    for field, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                       ("guided_grammar", "grammar"), ("structural_tag", "structural_tag")):
        value = getattr(request, field, None)
        if value is not None:
            constraints.append((field, key, _kind_value(key, value, field)))
    response_format = getattr(request, "response_format", None)
    if response_format is not None:
        found = _from_response_format(response_format)
        if found is not None:
            constraints.append(("response_format", *found))
    pattern = getattr(request, "guided_whitespace_pattern", None)
    if pattern is not None:
        _tune(tuning, "whitespace_pattern", _string(pattern, "guided_whitespace_pattern"), "guided_whitespace_pattern")
    backend = getattr(request, "guided_decoding_backend", None)
    if backend is not None:
        _backend(backend, "guided_decoding_backend", tuning)
    if len(constraints) > 1:
        names = [f"{field} ({getattr(response_format, 'type', '')})" if field == "response_format" else field
                 for field, _, _ in constraints]
        raise APIError(f"{ONE_KIND}, but this request gives {len(constraints)}: {', '.join(names)}; give one",
                       400, constraints[0][0].split(".")[0])
    if not constraints:
        if given is not None:
            raise APIError(f"structured_outputs must set one kind of constraint: one of {list(STRUCTURED_OUTPUT_KINDS)}"
                           " (or come with response_format json_object, json_schema or structural_tag), got none",
                           400, "structured_outputs")
        return None
    field, key, value = constraints[0]
    try:
        return StructuredOutputsParams(**{key: value}, **{k: v for k, (v, _) in tuning.items()})
    except (TypeError, ValueError) as exc:
        raise APIError(f"{field}: {exc}", 400, field.split(".")[0]) from None


def _structured_outputs_object(given: Any, constraints: list, tuning: dict) -> None:
    if not isinstance(given, dict):
        raise APIError(f"structured_outputs must be an object with keys {list(_PARAM_KEYS)}, got "
                       f"{type(given).__name__}", 400, "structured_outputs")
    unknown = [key for key in given if key not in _PARAM_KEYS]
    if unknown:
        raise APIError(f"structured_outputs has unknown key(s) {unknown}; allowed keys: {list(_PARAM_KEYS)}", 400,
                       "structured_outputs")
    for key, value in given.items():
        field = f"structured_outputs.{key}"
        if value is None or (key == "json_object" and value is False):
            continue
        if key in STRUCTURED_OUTPUT_KINDS:
            constraints.append((field, key, _kind_value(key, value, field)))
        elif key == "backend":
            _backend(value, field, tuning)
        elif key == "whitespace_pattern":
            _tune(tuning, key, _string(value, field), field)
        else:
            if not isinstance(value, bool):
                raise APIError(f"{field} must be true or false, got {_short(value)}", 400, "structured_outputs")
            _tune(tuning, key, value, field)


def _kind_value(key: str, value: Any, field: str) -> Any:
    """A constraint's value, checked: `field` names it in errors (its param is the top-level field)."""
    param = field.split(".")[0]
    if key == "json":
        if isinstance(value, str):
            _json_object(value, field)
        elif not isinstance(value, dict):
            raise APIError(f"{field} must be a JSON schema: an object or its JSON text, got {type(value).__name__}",
                           400, param)
        return value
    if key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise APIError(f"{field} must be a non-empty list of strings, got {_short(value)}", 400, param)
        return value
    if key == "json_object":
        if value is not True:
            raise APIError(f"{field} must be true or absent, got {_short(value)}", 400, param)
        return True
    text = _string(value, field)
    if key == "structural_tag":
        _json_object(text, field)
    return text


def _from_response_format(response_format: Any) -> tuple[str, Any] | None:
    """(StructuredOutputsParams key, value) that response_format asks for; None for "text"."""
    kind = response_format.type
    if kind not in RESPONSE_FORMAT_TYPES:
        raise APIError(f"response_format type must be one of {list(RESPONSE_FORMAT_TYPES)}, got {_short(kind)}", 400,
                       "response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json_object", True
    if kind == "json_schema":
        return "json", _json_schema(response_format.json_schema)
    extra = dict(response_format.model_extra or {})
    if "structures" in extra:  # vLLM's legacy structural tag: {"structures": [{begin, schema, end}], "triggers"}
        structures, triggers = extra["structures"], extra.get("triggers")
        if not isinstance(structures, list) or not all(
                isinstance(s, dict) and isinstance(s.get("begin"), str) and isinstance(s.get("end"), str)
                and isinstance(s.get("schema", {}), (dict, type(None))) for s in structures):
            raise APIError('response_format.structures must be a list of {"begin": str, "schema": {...}, "end": str}',
                           400, "response_format")
        if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
            raise APIError("response_format.triggers must be a list of strings (structural_tag with structures)", 400,
                           "response_format")
    elif not isinstance(extra.get("format"), dict):
        raise APIError('response_format type "structural_tag" needs "format" (an xgrammar structural tag object) or '
                       '"structures" and "triggers"', 400, "response_format")
    try:
        return "structural_tag", json.dumps({"type": "structural_tag", **extra})
    except (TypeError, ValueError, RecursionError) as exc:
        raise APIError(f"response_format structural_tag cannot be written as JSON: {exc}", 400,
                       "response_format") from None


def _json_schema(spec: Any) -> dict:
    if spec is None:
        raise APIError("When response_format type is 'json_schema', the 'json_schema' field must be provided "
                       '(vLLM\'s rule): {"name": ..., "schema": {...}}', 400, "response_format")
    if not isinstance(spec.get("name"), str):
        raise APIError(f"response_format.json_schema.name must be a string (OpenAI and vLLM require it), got "
                       f"{_short(spec.get('name'))}", 400, "response_format")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        missing = "is required" if schema is None else f"must be an object, got {type(schema).__name__}"
        raise APIError(f"response_format.json_schema.schema {missing}: the JSON schema the output must follow", 400,
                       "response_format")
    for key, kind, shown in (("strict", bool, "true or false"), ("description", str, "a string")):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise APIError(f"response_format.json_schema.{key} must be {shown}, got {_short(spec[key])}", 400,
                           "response_format")
    return schema


def _backend(value: Any, field: str, tuning: dict) -> None:
    param = field.split(".")[0]
    try:
        name, options = split_backend_options(value, field)
    except (TypeError, ValueError) as exc:
        raise APIError(str(exc), 400, param) from None
    if name == "lm-format-enforcer":
        raise APIError(f"{field} 'lm-format-enforcer' is not supported: it does not import with transformers 5; "
                       f"allowed: {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)}", 400, param)
    if name not in STRUCTURED_OUTPUT_ENGINE_BACKENDS:
        raise APIError(f"{field} must be one of {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)} (optionally with "
                       f"':no-fallback,disable-any-whitespace,no-additional-properties'), got {_short(value)}", 400,
                       param)
    _tune(tuning, "backend", name, field)
    for key, on in options.items():
        _tune(tuning, key, on, field)


def _tune(tuning: dict, key: str, value: Any, field: str) -> None:
    if key in tuning and tuning[key][0] != value:
        other = tuning[key][1]
        raise APIError(f"{field} and {other} disagree on {key} ({_short(value)} and {_short(tuning[key][0])}): they "
                       "are two spellings of one setting; give one", 400, field.split(".")[0])
    tuning[key] = (value, field)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise APIError(f"{field} must be a string, got {type(value).__name__}", 400, field.split(".")[0])
    return value


def _json_object(text: str, field: str) -> None:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise APIError(f"{field} must be valid JSON: {type(exc).__name__}: {str(exc)[:200]}", 400,
                       field.split(".")[0]) from None
    if not isinstance(parsed, dict):
        raise APIError(f"{field} must be the JSON text of an object, got JSON {type(parsed).__name__}", 400,
                       field.split(".")[0])


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
