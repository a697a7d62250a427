"""RequestGrammar: one request's constraint state, the same for every backend.

It owns what backends disagree on — EOS, termination, special and out-of-vocabulary ids, rollback
across the end — and leaves parsing to the backend's Matcher.

Invariants:
- A row this class fills allows no id >= the model's vocab_size, no id past the tokenizer and no
  special token except the EOS ids; the EOS ids are allowed exactly when the grammar can end
  here (and are the only ids allowed once it has ended, after a compile error, or where the
  grammar allows nothing at all, so no row is ever empty).
- The grammar is terminated exactly when an EOS id was accepted at a point where it could end.
  After that, further EOS ids are accepted as no-ops (ignore_eos keeps sampling EOS) and any other
  token is refused.
- `accept_tokens` is all-or-nothing: it returns False and leaves the state as it was when any token
  is refused; `validate_tokens` never changes the state; `rollback(n)` undoes the last n accepted
  tokens, termination included.
- Compilation runs elsewhere; `is_ready` and `error` never wait. Methods that need the grammar
  (accept, validate, rollback, fill) wait for compilation when it is still running. A RequestGrammar
  is used from one thread (the engine's).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Any

import numpy as np

from pagoda.structured_output.backend import Backend, Matcher, check_bitmask


@dataclass
class MaskContext:
    """Rows shared by every request of one manager (read-only)."""

    width: int  # words per output row: ceil(model vocab_size / 32)
    native_width: int  # words per backend row: ceil(max(vocab_size, tokenizer size) / 32)
    valid_row: np.ndarray  # ids a grammar may produce as text (no specials, none out of range)
    eos_row: np.ndarray
    eos_ids: frozenset[int]
    valid_ids: np.ndarray  # bool [32 * width]

    @property
    def banned_words(self) -> np.ndarray:
        """The words of a row that hold an id a grammar may never produce (specials, ids past the vocabulary)."""
        words = getattr(self, "_banned_words", None)
        if words is None:
            words = np.flatnonzero(self.valid_row != -1)
            object.__setattr__(self, "_banned_words", words)
        return words

    def is_text_token(self, token: int) -> bool:
        return 0 <= token < self.valid_ids.size and bool(self.valid_ids[token])


class RequestGrammar:
    def __init__(self, request_id: str, future: "concurrent.futures.Future[tuple[Backend, Any]]",
                 ctx: MaskContext) -> None:
        self.request_id = request_id
        self._future = future
        self._ctx = ctx
        self._matcher: Matcher | None = None
        self._error: str | None = None
        self.backend: str | None = None  # the backend's name, once compiled
        self._total = 0  # tokens accepted, EOS included
        self._matched = 0  # tokens the matcher consumed (those before the end)
        self._end: int | None = None  # index of the EOS that ended the grammar
        self._scratch: np.ndarray | None = None

    # -- readiness -------------------------------------------------------------------------------
    def _settle(self, wait: bool) -> bool:
        """True once the matcher exists or the compile failed; with `wait`, blocks until then."""
        if self._matcher is not None or self._error is not None:
            return True
        if not wait and not self._future.done():
            return False
        try:
            backend, compiled = self._future.result()
            self._matcher = backend.new_matcher(compiled)
            self.backend = backend.name
        except Exception as exc:  # the compile's error is this request's failure reason
            self._error = str(exc) or type(exc).__name__
        return True

    def is_ready(self) -> bool:
        """Compiled (or failed); never waits."""
        return self._settle(wait=False)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for compilation; whether it is ready."""
        concurrent.futures.wait([self._future], timeout=timeout)
        return self.is_ready()

    @property
    def error(self) -> str | None:
        """Why the grammar cannot be used (compile failure or a backend fault); None when fine or not ready."""
        self._settle(wait=False)
        if self._error is None and self._matcher is not None:
            self._error = self._matcher.error()
        return self._error

    # -- tokens ----------------------------------------------------------------------------------
    def is_terminated(self) -> bool:
        return self._end is not None

    def _advance(self, token: int) -> bool:
        """Accept one token (False and unchanged when refused)."""
        ctx, matcher = self._ctx, self._matcher
        if token in ctx.eos_ids:
            if self._end is None:
                if not matcher.can_end():
                    return False
                self._end = self._total
            self._total += 1
            return True
        if self._end is not None or not ctx.is_text_token(token) or not matcher.accept(token):
            return False
        self._total += 1
        self._matched += 1
        return True

    def _undo(self, num_tokens: int) -> None:
        target = self._total - num_tokens
        if self._end is not None and target > self._end:  # only no-op EOS tokens go
            self._total = target
            return
        self._end = None
        self._matcher.rollback(self._matched - target)
        self._matched = self._total = target

    def _usable(self) -> bool:
        return self._settle(wait=True) and self._matcher is not None

    def accept_tokens(self, tokens: list[int]) -> bool:
        """Advance by all `tokens`, or return False and change nothing."""
        if not self._usable():
            return False
        for done, token in enumerate(tokens):
            if not self._advance(token):
                self._undo(done)
                return False
        return True

    @staticmethod
    def accept_batch(grammars: list["RequestGrammar"], tokens: list[int]) -> list[bool]:
        """accept_tokens([tokens[i]]) for each grammars[i] (distinct requests), with one backend call for the rows
        whose backend accepts in batches (a text token, a grammar not ended); the same results."""
        results = [False] * len(grammars)
        groups: dict[type, list[int]] = {}
        for i, (grammar, token) in enumerate(zip(grammars, tokens)):
            matcher = grammar.batch_matcher() if grammar.is_ready() else None
            if matcher is not None and type(matcher).batch_accept is not None and token not in grammar._ctx.eos_ids \
                    and grammar._ctx.is_text_token(token):
                groups.setdefault(type(matcher), []).append(i)
            else:
                results[i] = grammar.accept_tokens([token])
        for matcher_type, rows in groups.items():
            accepted = matcher_type.batch_accept([grammars[i]._matcher for i in rows], [tokens[i] for i in rows])
            for i, ok in zip(rows, accepted):
                if ok:
                    grammars[i]._total += 1
                    grammars[i]._matched += 1
                results[i] = bool(ok)
        return results

    def validate_tokens(self, tokens: list[int]) -> int:
        """How many leading `tokens` the grammar accepts from here; the state is unchanged."""
        if not self._usable():
            return 0
        done = 0
        for token in tokens:
            if not self._advance(token):
                break
            done += 1
        self._undo(done)
        return done

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (an EOS that ended the grammar counts as one)."""
        if num_tokens < 0 or num_tokens > self._total:
            raise ValueError(f"rollback: num_tokens must be in [0, {self._total}], got {num_tokens}")
        if num_tokens and self._usable():
            self._undo(num_tokens)

    @property
    def num_accepted_tokens(self) -> int:
        return self._total

    # -- masks -----------------------------------------------------------------------------------
    def batch_matcher(self) -> Matcher | None:
        """The matcher, when the backend's batch fill can write this request's row as it is (ready, not
        ended, no error, rows of the output's width); then `finish_batch_rows` completes the rows."""
        ctx, matcher = self._ctx, self._matcher
        if matcher is None or self._end is not None or self._error is not None or ctx.native_width != ctx.width:
            return None
        return matcher if type(matcher).batch_fill is not None else None

    @staticmethod
    def finish_batch_rows(grammars: list["RequestGrammar"], bitmask: np.ndarray, rows: list[int]) -> None:
        """What fill_bitmask does after the backend's fill, for rows a batch fill wrote by matchers of one type
        (vectorized; only the few words that hold a banned id are touched, and contiguous rows are worked on in
        place; where the backend's fill marks EOS exactly when the grammar can end, that bit is read instead of
        asking each matcher)."""
        ctx = grammars[0]._ctx
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        block = bitmask[rows[0]:rows[-1] + 1] if contiguous else bitmask[rows]
        if type(grammars[0]._matcher).fill_marks_eos:
            eos_words = np.flatnonzero(ctx.eos_row)
            can_end = (block[:, eos_words] & ctx.eos_row[eos_words]).any(axis=1)
        else:
            can_end = np.array([g._matcher.can_end() for g in grammars])
        words = ctx.banned_words
        block[:, words] &= ctx.valid_row[words]
        failed = np.array([g.error is not None for g in grammars])
        ends = can_end | ~block.any(axis=1)
        block[ends & ~failed] |= ctx.eos_row
        block[failed] = ctx.eos_row
        if not contiguous:
            bitmask[rows] = block

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the tokens allowed next into `bitmask[row]` (int32 words of the model's vocab)."""
        ctx = self._ctx
        check_bitmask(bitmask, ctx.width)
        out = bitmask[row]
        if not self._usable() or self._end is not None or self.error is not None:
            out[:] = ctx.eos_row
            return
        if ctx.native_width == ctx.width:
            self._matcher.fill(bitmask, row)
        else:
            if self._scratch is None:
                self._scratch = np.zeros((1, ctx.native_width), dtype=np.int32)
            self._matcher.fill(self._scratch, 0)
            out[:] = self._scratch[0, :ctx.width]
        if self.error is not None:  # the backend failed while computing the mask
            out[:] = ctx.eos_row
            return
        np.bitwise_and(out, ctx.valid_row, out=out)
        if self._matcher.can_end() or not out.any():
            np.bitwise_or(out, ctx.eos_row, out=out)

    def fill_bitmask_with_drafts(self, bitmask: np.ndarray, row: int, draft: list[int]) -> int:
        """Fill rows row .. row + len(draft): row + j is the mask after draft[:j]; returns the rows written.

        The state is unchanged afterwards. Once a draft token is refused, the rows after it allow every
        text token and EOS (the rejection sampler stops at that token, so they are never used; a row
        that allows nothing would turn the logits into NaN).
        """
        self.fill_bitmask(bitmask, row)
        if not self._usable() or self.error is not None:
            bitmask[row + 1:row + 1 + len(draft)] = self._ctx.eos_row
            return 1 + len(draft)
        advanced, alive = 0, True
        for j, token in enumerate(draft, start=1):
            alive = alive and self._advance(token)
            if alive:
                advanced += 1
                self.fill_bitmask(bitmask, row + j)
            else:
                np.bitwise_or(self._ctx.valid_row, self._ctx.eos_row, out=bitmask[row + j])
        if advanced:
            self._undo(advanced)
        return 1 + len(draft)
