"""The interface every grammar backend implements, and the bitmask helpers they share.

A bitmask row is int32 words: bit b of word w set means token 32*w + b is allowed (xgrammar's and
llguidance's layout; the sampler's apply kernel reads the same).

Invariants:
- A Backend is built once per engine (its tokenizer tables are the expensive part) and is safe to
  call `compile` on from several threads at once; a compiled grammar is immutable and shared.
- A Matcher is one request's parse state. It never sees an EOS id: the RequestGrammar above it
  decides EOS from `can_end()`, so every backend ends the same way.
- `Matcher.accept` either advances by the token or returns False and leaves the state unchanged;
  `rollback(n)` undoes exactly the last n accepted tokens.
- `Matcher.fill` writes one row of the backend's native width (ceil(max(model vocab, tokenizer
  size) / 32) words); bits past the model's vocabulary and for special tokens are cleared above it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable

import numpy as np

from pagoda.structured_output.spec import GrammarSpec


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row that cover `vocab_size` token ids."""
    return (vocab_size + 31) // 32


def ids_to_row(ids: Iterable[int], width: int) -> np.ndarray:
    """A row allowing exactly `ids` (each < 32 * width)."""
    bits = np.zeros(width * 32, dtype=np.uint8)
    bits[np.fromiter(ids, dtype=np.int64)] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


def row_to_ids(row: np.ndarray) -> np.ndarray:
    """The token ids a row allows, ascending."""
    bits = np.unpackbits(np.ascontiguousarray(row, dtype=np.int32).view(np.uint8), bitorder="little")
    return np.flatnonzero(bits)


def check_bitmask(bitmask: np.ndarray, width: int) -> None:
    if not isinstance(bitmask, np.ndarray) or bitmask.dtype != np.int32 or bitmask.ndim != 2:
        raise TypeError("bitmask must be a 2-D numpy int32 array")
    if bitmask.shape[1] != width or not bitmask.flags.c_contiguous:
        raise ValueError(f"bitmask must be C-contiguous with {width} words per row, got shape {bitmask.shape}")


class Matcher(ABC):
    """One request's position in a compiled grammar (never given EOS ids)."""

    @abstractmethod
    def accept(self, token: int) -> bool:
        """Advance by `token`; False (state unchanged) when the grammar does not allow it."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens."""

    @abstractmethod
    def can_end(self) -> bool:
        """Whether the text so far is complete (EOS may come next)."""

    @abstractmethod
    def fill(self, bitmask: np.ndarray, index: int) -> None:
        """Write the allowed next tokens into row `index` of `bitmask` (native width)."""

    def error(self) -> str | None:
        """A failure the backend hit while matching (it then allows nothing); None when healthy."""
        return None

    # A backend that fills many rows at once (several threads) sets this to a function
    # `(matchers, bitmask, rows) -> None` filling row rows[i] for matchers[i] (native width); None: row by row.
    batch_fill = None
    # Likewise `(matchers, tokens) -> list[bool]`, accepting tokens[i] in matchers[i] in one call; None: one by one.
    batch_accept = None
    # True when `fill` sets the EOS ids' bits exactly when `can_end()` holds: then a batch fill's rows tell it
    # without one call per row (RequestGrammar.finish_batch_rows).
    fill_marks_eos = False


class Backend(ABC):
    """A grammar library bound to one tokenizer and vocabulary size."""

    name: str

    @abstractmethod
    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        """`vocab_size` is the native row size: max(model vocab, tokenizer size)."""

    @abstractmethod
    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar of `spec`, shared by every request with that spec; raises on failure."""

    @abstractmethod
    def new_matcher(self, compiled: Any) -> Matcher:
        """A fresh matcher at the start of a compiled grammar (cheap)."""
