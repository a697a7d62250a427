"""One server request as its consumer sees it: a slot holding its latest output, the stream that reads
it, and the errors a request can end with (AsyncLLM's pieces, engine/async_llm.py).

Errors a consumer can get, and what the HTTP layer should answer with:
- EngineOverloadedError: too many unfinished requests, nothing registered (503 + Retry-After).
- EngineDeadError (core_client.py): the engine core is gone, or died while this request had
  already produced output (503); EngineRestartingError (core_supervisor.py): a restart is under way
  (503 + Retry-After).
- RequestFailedError: the engine failed this request alone (finish_reason "error"; vLLM answers 500).
- RequestTimeoutError: the request ran past the server's deadline (`request_timeout_s`) and was
  aborted (504).
- RequestCrashedEngineError: the request was in flight at two engine-core crashes in a row and is
  not replayed (400: a client must not retry it as it is).
- RequestAbortedError: someone other than the consumer aborted it.

Invariants:
- A slot holds at most one unread item: a newer CUMULATIVE/FINAL_ONLY output replaces it, a DELTA one
  is merged into it, and an exception is final (nothing replaces it).
- A slot remembers what a restart needs (`core_requests`: the engine requests sent for it, kept only
  when self-healing is on; `crashes`: engine-core crashes it was in flight at) and its deadline timer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pagoda.outputs import RequestOutput

if TYPE_CHECKING:
    from pagoda.engine.async_llm import AsyncLLM


class EngineOverloadedError(RuntimeError):
    """Too many unfinished requests: the caller should retry later (HTTP 503 + Retry-After)."""


class RequestAbortedError(RuntimeError):
    """The request was aborted by someone other than its consumer."""


class RequestFailedError(RuntimeError):
    """The engine failed this request alone (finish_reason "error"); the engine itself goes on (HTTP 500)."""


class RequestTimeoutError(RuntimeError):
    """The request ran past the server's per-request deadline and was aborted (HTTP 504)."""


class RequestCrashedEngineError(RuntimeError):
    """The request was in flight at two engine-core crashes and is refused, not replayed (HTTP 400)."""


class Slot:
    """The unread output of one request (a RequestOutput or an exception) and an event to wait on."""

    __slots__ = ("item", "event", "delta", "core_requests", "crashes", "timer")

    def __init__(self, delta: bool) -> None:
        self.item: Any = None
        self.event = asyncio.Event()
        self.delta = delta
        self.core_requests: list | None = None  # EngineCoreRequests sent for it (self-healing on)
        self.crashes = 0  # engine-core crashes this request was in flight at
        self.timer: asyncio.TimerHandle | None = None  # its deadline (request_timeout_s)

    def put(self, item: Any) -> None:
        if isinstance(self.item, BaseException):
            return  # an error is final
        if self.delta and isinstance(self.item, RequestOutput) and isinstance(item, RequestOutput):
            item = merge_delta(self.item, item)
        self.item = item
        self.event.set()

    async def get(self) -> Any:
        await self.event.wait()
        item, self.item = self.item, None
        self.event.clear()
        return item

    def close(self, error: BaseException | None = None) -> None:
        """The request is over for the engine: stop its deadline; hand `error` to its consumer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if error is not None:
            self.put(error)


def merge_delta(old: RequestOutput, new: RequestOutput) -> RequestOutput:
    """`old` followed by `new`, both DELTA outputs of one request, as one DELTA output (vLLM's add())."""
    by_index = {c.index: c for c in old.outputs}
    for c in new.outputs:
        prev = by_index.get(c.index)
        if prev is None:
            old.outputs.append(c)
            by_index[c.index] = c
            continue
        prev.text += c.text
        prev.token_ids = list(prev.token_ids) + list(c.token_ids)
        if c.logprobs is not None:
            prev.logprobs = list(prev.logprobs or []) + list(c.logprobs)
        prev.cumulative_logprob, prev.finish_reason, prev.stop_reason = (
            c.cumulative_logprob, c.finish_reason, c.stop_reason)
        prev.error = c.error
    old.outputs.sort(key=lambda c: c.index)
    if new.prompt_logprobs:
        old.prompt_logprobs = list(old.prompt_logprobs or []) + list(new.prompt_logprobs)
    old.finished, old.num_cached_tokens = new.finished, new.num_cached_tokens
    return old


class RequestStream:
    """Async iterator over one request's RequestOutputs; aborts the request if dropped unfinished."""

    def __init__(self, engine: "AsyncLLM", request_id: str, slot: Slot) -> None:
        self.engine, self.request_id, self._slot = engine, request_id, slot
        self.finished = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        try:
            item = await self._slot.get()
        except BaseException:  # cancelled: the consumer is gone
            self.abort()
            raise
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def abort(self) -> None:
        """Abort the request unless it already finished (idempotent)."""
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)

    def __del__(self) -> None:
        if not self.finished and self.engine._loop is not None and not self.engine._loop.is_closed():
            try:
                self.engine._loop.call_soon_threadsafe(self.engine.abort, self.request_id)
            except RuntimeError:
                pass
