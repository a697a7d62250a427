"""Which backend serves a request's constraint, decided without a tokenizer (the frontend's check).

The rules are vLLM's: a request's `backend` beats the engine's (StructuredOutputsConfig.backend);
a named backend serves the request or the request is refused, never falling back; "auto" tries
xgrammar and, when xgrammar cannot serve the constraint (invalid for it, or using a feature it
drops, e.g. multipleOf or uniqueItems, or a whitespace_pattern), falls back to guidance — or to
outlines when the schema uses patternProperties, which guidance lacks — unless disable_fallback
(the request's or the engine's) is set, in which case xgrammar's error is the answer.

Invariants:
- `resolve_backend` returns one of SERVED_BACKENDS or raises ValueError whose text starts with the
  StructuredOutputsParams field to blame ("structured_outputs.json: ...").
- The answer depends only on the params and the config, so resolving again (in the engine, or for a
  request whose `backend` was set to the answer) gives the same backend; answers are cached by spec.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

from pagoda.config import STRUCTURED_OUTPUT_ENGINE_BACKENDS, StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams
from pagoda.structured_output import guidance_backend, outlines_backend, xgrammar_backend
from pagoda.structured_output.spec import GrammarSpec, SpecError, disable_fallback, make_spec

logger = logging.getLogger(__name__)

SERVED_BACKENDS = ("xgrammar", "guidance", "outlines")
_CHECKS: dict[str, Callable[[GrammarSpec], None]] = {
    "xgrammar": xgrammar_backend.check,
    "guidance": guidance_backend.check,
    "outlines": outlines_backend.check,
}


def requested_backend(params: StructuredOutputsParams, config: StructuredOutputsConfig) -> str:
    """The backend asked for: the request's, else the engine's ("auto" included)."""
    backend = params.backend if params.backend is not None else config.backend
    if backend == "lm-format-enforcer":
        raise ValueError("structured_outputs.backend: 'lm-format-enforcer' is not supported (it does not import "
                         f"with transformers 5); allowed: {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)}")
    if backend not in STRUCTURED_OUTPUT_ENGINE_BACKENDS:
        raise ValueError(f"structured_outputs.backend: must be one of {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)}, "
                         f"got {backend!r}")
    return backend


def resolve_backend(params: StructuredOutputsParams, config: StructuredOutputsConfig) -> str:
    """Validate the constraint and return the backend that will serve it ('xgrammar' | 'guidance' | 'outlines')."""
    requested = requested_backend(params, config)
    return resolve_spec(make_spec(params, config), requested, disable_fallback(params, config))


def resolve_spec(spec: GrammarSpec, requested: str, no_fallback: bool) -> str:
    return _resolve_cached(spec, requested, no_fallback)


@functools.lru_cache(maxsize=1024)
def _resolve_cached(spec: GrammarSpec, requested: str, no_fallback: bool) -> str:
    """resolve_spec, remembered: the answer (or the SpecError, which lru_cache does not keep and so recomputes)
    depends on its arguments only, and a server sees the same schema many times."""
    if requested != "auto":
        _CHECKS[requested](spec)
        return requested
    try:
        xgrammar_backend.check(spec)
        return "xgrammar"
    except SpecError as exc:
        if no_fallback:
            raise
        first = exc
    fallback = "guidance"
    if spec.kind == "json" and guidance_backend.has_unsupported_json_features(spec.schema()):
        fallback = "outlines"
    try:
        _CHECKS[fallback](spec)
    except SpecError as exc:
        raise SpecError(exc.field, f"{exc.reason}; xgrammar cannot serve it either: {first.reason}") from None
    logger.debug("structured output: xgrammar cannot serve this %s constraint (%s); using %s",
                 spec.kind, first.reason, fallback)
    return fallback
