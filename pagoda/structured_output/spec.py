"""GrammarSpec: one request's output constraint, normalized, with the compile options that apply.

Invariants:
- A GrammarSpec is frozen and hashable; two requests whose specs are equal get the same compiled
  grammar from a backend (the manager's cache key is (backend name, spec)).
- `text` is canonical for its kind: a JSON schema is re-serialized from its parsed value (key order
  kept: the order a schema lists its properties is the order the output writes them), choices are a
  JSON list of strings, json_object has text "" (its schema is {"type": "object"}).
- Options that cannot change what a kind compiles to are reset to their defaults (a regex takes no
  whitespace option), so such requests still share their compiled grammar.
- Per-request flags beat the engine's: an option is on when either StructuredOutputsParams or
  StructuredOutputsConfig turns it on.
- Nothing here imports a grammar library: building a spec is cheap and needs no tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pagoda.config import StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams

JSON_KINDS = ("json", "json_object")
_COMMENT = re.compile(r"(#|//).*$")
_NATIVE_STAMP = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


class SpecError(ValueError):
    """A constraint a backend cannot compile: `field` is the StructuredOutputsParams field to blame."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"structured_outputs.{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class GrammarSpec:
    kind: str  # one of sampling_params.STRUCTURED_OUTPUT_KINDS
    text: str
    any_whitespace: bool = True  # False: disable_any_whitespace (compact JSON)
    additional_properties: bool = True  # False: disable_additional_properties
    whitespace_pattern: str | None = None  # JSON kinds only

    @property
    def field(self) -> str:
        """The StructuredOutputsParams field holding the constraint."""
        return self.kind

    def schema(self) -> Any:
        """The JSON schema of a json / json_object spec."""
        return {"type": "object"} if self.kind == "json_object" else json.loads(self.text)

    def choices(self) -> list[str]:
        return json.loads(self.text)

    def error(self, reason: str) -> SpecError:
        return SpecError(self.field, reason)


def disable_fallback(params: StructuredOutputsParams, config: StructuredOutputsConfig) -> bool:
    return bool(params.disable_fallback or config.disable_fallback)


def make_spec(params: StructuredOutputsParams, config: StructuredOutputsConfig) -> GrammarSpec:
    """The normalized spec of `params`; SpecError for what no backend could read (bad JSON text, empty grammar)."""
    kind = params.kind
    text = _canonical_text(kind, getattr(params, kind))
    any_whitespace = not (params.disable_any_whitespace or config.disable_any_whitespace)
    additional = not (params.disable_additional_properties or config.disable_additional_properties)
    pattern = params.whitespace_pattern
    if kind in ("regex", "choice", "grammar"):
        return GrammarSpec(kind, text)
    if kind == "structural_tag":  # its schemas are JSON: the JSON options apply inside them
        pattern = None
    return GrammarSpec(kind, text, any_whitespace, additional, pattern)


def _canonical_text(kind: str, value: Any) -> str:
    if kind == "json":
        if isinstance(value, str):
            if not value.strip():
                raise SpecError("json", "the JSON schema is an empty string")
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SpecError("json", f"invalid JSON text ({exc})") from None
        if not isinstance(value, dict):
            raise SpecError("json", f"a JSON schema must be a JSON object, got {type(value).__name__}")
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise SpecError("json", f"the schema is not JSON-serializable ({exc})") from None
    if kind == "json_object":
        return ""
    if kind == "choice":
        return json.dumps(list(value), ensure_ascii=False)
    if kind == "structural_tag":
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SpecError("structural_tag", f"invalid JSON text ({exc})") from None
        if not isinstance(parsed, dict):
            raise SpecError("structural_tag", "must be a JSON object")
        return json.dumps(parsed, ensure_ascii=False)
    if kind == "grammar" and not value.strip():
        raise SpecError("grammar", "the grammar is an empty string")
    return value


def one_line(error: object, limit: int = 400) -> str:
    """A library's error message on one line: native-code stamps ("[12:00:00] file.cc:94: ") dropped."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = _NATIVE_STAMP.sub("", text) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def grammar_is_lark(text: str) -> bool:
    """Lark unless some line (comments removed) defines a rule with EBNF's '::='."""
    return not any("::=" in _COMMENT.sub("", line) for line in text.splitlines())
