"""Structured output (guided decoding): constraints compiled to grammars that mask the sampler's logits.

The frontend calls `resolve_backend` (cheap, no tokenizer) to refuse what no backend can serve; the
engine's StructuredOutputManager compiles each request's constraint in background threads and
fills one int32 bitmask row per request (per draft position with speculative decoding), which the
sampler applies (pagoda.sample.token_bitmask).

Invariants:
- Importing this package imports no grammar library: xgrammar, llguidance and outlines_core are
  loaded on first use (xgrammar alone takes seconds); triton is never imported here.
"""

from pagoda.structured_output.backend import bitmask_width, ids_to_row, row_to_ids
from pagoda.structured_output.manager import StructuredOutputManager
from pagoda.structured_output.request_grammar import RequestGrammar
from pagoda.structured_output.resolve import SERVED_BACKENDS, resolve_backend
from pagoda.structured_output.spec import GrammarSpec, SpecError, make_spec

__all__ = [
    "SERVED_BACKENDS",
    "GrammarSpec",
    "RequestGrammar",
    "SpecError",
    "StructuredOutputManager",
    "bitmask_width",
    "ids_to_row",
    "make_spec",
    "resolve_backend",
    "row_to_ids",
]
