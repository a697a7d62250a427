"""StructuredOutputManager: the engine-side owner of backends, compiled grammars and bitmasks.

Invariants:
- Each backend (its tokenizer tables) is built once, on the first request that needs it, in a
  compile thread; a backend that fails to build fails every request routed to it, with its reason.
- Compiled grammars are cached by (backend, GrammarSpec), at most `cache_size` of them (least
  recently used go first); requests with equal specs share one compile, even when they arrive
  while it is still running. `num_compiles` counts compiles actually started.
- `add_request` never blocks and never raises for a bad constraint: resolution and compilation run
  in the thread pool, and a failure becomes the RequestGrammar's `error`.
- Rows from `fill_bitmask` are `bitmask_width()` int32 words wide, covering the model's vocab_size;
  the rules for what a row allows are RequestGrammar's.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np

from pagoda.config import StructuredOutputsConfig
from pagoda.sampling_params import StructuredOutputsParams
from pagoda.structured_output.backend import Backend, bitmask_width, check_bitmask, ids_to_row
from pagoda.structured_output.guidance_backend import GuidanceBackend
from pagoda.structured_output.outlines_backend import OutlinesBackend
from pagoda.structured_output.request_grammar import MaskContext, RequestGrammar
from pagoda.structured_output.resolve import requested_backend, resolve_spec
from pagoda.structured_output.spec import GrammarSpec, disable_fallback, make_spec
from pagoda.structured_output.vocab import special_token_ids
from pagoda.structured_output.xgrammar_backend import XgrammarBackend

logger = logging.getLogger(__name__)

_BACKENDS: dict[str, type[Backend]] = {
    "xgrammar": XgrammarBackend,
    "guidance": GuidanceBackend,
    "outlines": OutlinesBackend,
}
_Compiled = tuple[Backend, Any]


class StructuredOutputManager:
    def __init__(self, config: StructuredOutputsConfig, tokenizer: Any, vocab_size: int,
                 eos_token_ids: Iterable[int], *, max_workers: int | None = None, cache_size: int = 256) -> None:
        """`vocab_size`: the model's (logits width), which may exceed the tokenizer's; `eos_token_ids`:
        every id that ends generation (EOS and generation_config's)."""
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        eos = sorted({int(i) for i in eos_token_ids if 0 <= int(i) < vocab_size})
        if not eos and getattr(tokenizer, "eos_token_id", None) is not None:
            eos = [int(tokenizer.eos_token_id)]
        if not eos:
            raise ValueError("eos_token_ids: structured output needs at least one EOS id below "
                             f"vocab_size={vocab_size}")
        self.config = config
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos)
        self._tokenizer = tokenizer
        self.tokenizer = tokenizer  # the HF tokenizer grammars are built for
        self._native_vocab = max(vocab_size, len(tokenizer))
        self._ctx = _mask_context(tokenizer, vocab_size, self._native_vocab, eos)
        self._lock = threading.Lock()  # guards _cache and num_compiles
        self._backend_lock = threading.Lock()  # held while a backend is built
        self._backends: dict[str, Backend | Exception] = {}
        self._cache: OrderedDict[tuple[str, GrammarSpec], concurrent.futures.Future[_Compiled]] = OrderedDict()
        self._cache_size = cache_size
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers or min(4, os.cpu_count() or 1), thread_name_prefix="pagoda-grammar")
        self.num_compiles = 0

    def bitmask_width(self) -> int:
        """int32 words per bitmask row: ceil(vocab_size / 32)."""
        return self._ctx.width

    # -- requests --------------------------------------------------------------------------------
    def add_request(self, request_id: str, params: StructuredOutputsParams) -> RequestGrammar:
        """Start compiling `params` for a request; returns at once (see RequestGrammar.is_ready / error)."""
        try:
            spec = make_spec(params, self.config)
            requested = requested_backend(params, self.config)
            no_fallback = disable_fallback(params, self.config)
        except ValueError as exc:
            return RequestGrammar(request_id, _failed(exc), self._ctx)
        if requested != "auto":
            with self._lock:
                shared = self._cache.get((requested, spec))
                if shared is not None:
                    self._cache.move_to_end((requested, spec))
                    return RequestGrammar(request_id, shared, self._ctx)
        try:
            future = self._pool.submit(self._resolve_and_compile, spec, requested, no_fallback)
        except RuntimeError:  # shut down
            future = _failed(RuntimeError("the structured-output manager is shut down"))
        return RequestGrammar(request_id, future, self._ctx)

    def _resolve_and_compile(self, spec: GrammarSpec, requested: str, no_fallback: bool) -> _Compiled:
        name = resolve_spec(spec, requested, no_fallback)
        return self._compiled(name, spec).result()

    def _compiled(self, name: str, spec: GrammarSpec) -> concurrent.futures.Future[_Compiled]:
        """The cache entry of (name, spec); computed here, in this thread, when it is new."""
        key = (name, spec)
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                return future
            future = self._cache[key] = concurrent.futures.Future()
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            self.num_compiles += 1
        start = time.perf_counter()
        try:
            backend = self._backend(name)
        except RuntimeError as exc:
            future.set_exception(exc)
            return future
        try:
            future.set_result((backend, backend.compile(spec)))
            logger.debug("compiled a %s constraint with %s in %.1f ms", spec.kind, name,
                         1e3 * (time.perf_counter() - start))
        except ValueError as exc:
            future.set_exception(exc)
        except Exception as exc:  # a library fault: the request fails with it, the engine goes on
            future.set_exception(RuntimeError(
                f"structured_outputs.{spec.kind}: {name} failed to compile it ({type(exc).__name__}: {exc})"))
        return future

    def _backend(self, name: str) -> Backend:
        with self._backend_lock:
            backend = self._backends.get(name)
            if backend is None:
                try:
                    backend = _BACKENDS[name](self._tokenizer, self._native_vocab, list(self.eos_token_ids))
                except Exception as exc:  # e.g. llguidance refuses a slow tokenizer
                    backend = RuntimeError(f"the {name} structured-output backend could not be set up for this "
                                           f"tokenizer ({type(exc).__name__}: {exc})")
                self._backends[name] = backend
        if isinstance(backend, Exception):
            raise backend
        return backend

    # -- masks -----------------------------------------------------------------------------------
    def fill_bitmask(self, grammars: list[RequestGrammar], drafts: list[list[int]] | None = None,
                     out: np.ndarray | None = None) -> np.ndarray:
        """int32 [rows, width]: one row per grammar, or 1 + len(drafts[i]) rows for grammar i
        (RequestGrammar.fill_bitmask_with_drafts). `out`, when given, is filled and returned."""
        if drafts is not None and len(drafts) != len(grammars):
            raise ValueError(f"drafts: one list per grammar expected, got {len(drafts)} for {len(grammars)}")
        rows = len(grammars) + (sum(len(d or ()) for d in drafts) if drafts else 0)
        if out is None:
            out = np.empty((rows, self._ctx.width), dtype=np.int32)
        check_bitmask(out, self._ctx.width)
        if out.shape[0] < rows:
            raise ValueError(f"out has {out.shape[0]} rows, {rows} needed")
        row = 0
        batches: dict[type, tuple[list, list[RequestGrammar], list[int]]] = {}  # matcher type -> its batch
        for i, grammar in enumerate(grammars):
            draft = list(drafts[i] or ()) if drafts is not None else []
            matcher = None if draft or not grammar.is_ready() else grammar.batch_matcher()
            if matcher is not None:  # filled below, with the other rows of its backend
                matchers, batched, rows_of = batches.setdefault(type(matcher), ([], [], []))
                matchers.append(matcher)
                batched.append(grammar)
                rows_of.append(row)
                row += 1
            else:
                row += grammar.fill_bitmask_with_drafts(out, row, draft) if draft else _fill_one(grammar, out, row)
        for matcher_type, (matchers, batched, rows_of) in batches.items():
            matcher_type.batch_fill(matchers, out, rows_of)
            RequestGrammar.finish_batch_rows(batched, out, rows_of)
        return out

    def shutdown(self) -> None:
        """Stop the compile threads (running compiles finish, queued ones are cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._cache.clear()


def _failed(exc: Exception) -> concurrent.futures.Future[_Compiled]:
    future: concurrent.futures.Future[_Compiled] = concurrent.futures.Future()
    future.set_exception(exc)
    return future


def _fill_one(grammar: RequestGrammar, out: np.ndarray, row: int) -> int:
    grammar.fill_bitmask(out, row)
    return 1


def _mask_context(tokenizer: Any, vocab_size: int, native_vocab: int, eos: list[int]) -> MaskContext:
    width = bitmask_width(vocab_size)
    valid = np.zeros(32 * width, dtype=bool)
    valid[:min(vocab_size, len(tokenizer))] = True
    blocked = [i for i in special_token_ids(tokenizer) | set(eos) if 0 <= i < valid.size]
    valid[blocked] = False
    return MaskContext(width=width, native_width=bitmask_width(native_vocab),
                       valid_row=ids_to_row(np.flatnonzero(valid), width), eos_row=ids_to_row(eos, width),
                       eos_ids=frozenset(eos), valid_ids=valid)
