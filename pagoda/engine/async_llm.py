"""AsyncLLM: the server's engine — asyncio frontend here, EngineCore in its own process.

The frontend half of LLMEngine (Processor: tokenize and validate; OutputProcessor: detokenize, stop
strings, n > 1 fan-in) runs in this process on top of an EngineCoreClient, which stands in for the
in-process EngineCore. One asyncio task reads EngineCoreOutputs from the core and pushes each
request's latest RequestOutput into that request's slot; `generate()` reads its slot.

Invariants:
- Every request added ends for its consumer in exactly one of three ways: a finished RequestOutput,
  an exception (EngineDeadError when the core dies, RequestAbortedError when someone else aborted
  it), or the consumer leaving (cancellation, `aclose()`, or dropping the stream), which aborts it
  in the core so its KV blocks return to the pool.
- A slot holds at most one unread RequestOutput: a newer CUMULATIVE/FINAL_ONLY output replaces it and
  a DELTA one is merged into it, so a slow consumer costs one object per request, never a growing
  queue, and still sees every token exactly once.
- Once the core is dead every open request fails within about a second and every new one raises
  EngineDeadError at once; nothing waits forever.
- At most `max_pending_requests` engine requests (n per user request) are unfinished at a time;
  beyond that `add_request` raises EngineOverloadedError and registers nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, AsyncIterator, Sequence

from pagoda.engine.core_client import EngineCoreClient, EngineDeadError, EngineStartError
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine.output_processor import child_request_id
from pagoda.engine_args import EngineArgs
from pagoda.metrics.stats import StatsTracker
from pagoda.outputs import RequestOutput

logger = logging.getLogger(__name__)

__all__ = ["AsyncLLM", "EngineDeadError", "EngineStartError", "EngineOverloadedError", "RequestAbortedError"]

_OUTPUT_CHUNK = 512  # outputs processed between yields to the event loop


class EngineOverloadedError(RuntimeError):
    """Too many unfinished requests: the caller should retry later (HTTP 503 + Retry-After)."""


class RequestAbortedError(RuntimeError):
    """The request was aborted by someone other than its consumer."""


class _Slot:
    """The unread output of one request (a RequestOutput or an exception) and an event to wait on.

    CUMULATIVE / FINAL_ONLY outputs replace an unread one (the newer holds everything); DELTA outputs
    are merged into it, so a slow consumer still receives every piece exactly once.
    """

    __slots__ = ("item", "event", "delta")

    def __init__(self, delta: bool) -> None:
        self.item: Any = None
        self.event = asyncio.Event()
        self.delta = delta

    def put(self, item: Any) -> None:
        if isinstance(self.item, BaseException):
            return  # an error is final
        if self.delta and isinstance(self.item, RequestOutput) and isinstance(item, RequestOutput):
            item = _merge_delta(self.item, item)
        self.item = item
        self.event.set()

    async def get(self) -> Any:
        await self.event.wait()
        item, self.item = self.item, None
        self.event.clear()
        return item


def _merge_delta(old: RequestOutput, new: RequestOutput) -> RequestOutput:
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
    old.outputs.sort(key=lambda c: c.index)
    if new.prompt_logprobs:
        old.prompt_logprobs = list(old.prompt_logprobs or []) + list(new.prompt_logprobs)
    old.finished, old.num_cached_tokens = new.finished, new.num_cached_tokens
    return old


class RequestStream:
    """Async iterator over one request's RequestOutputs; aborts the request if dropped unfinished."""

    def __init__(self, engine: "AsyncLLM", request_id: str, slot: _Slot) -> None:
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


class AsyncLLM:
    def __init__(self, engine_args: EngineArgs, *, start_timeout_s: float = 600.0,
                 max_pending_requests: int | None = None, stat_loggers: Sequence[Any] = ()) -> None:
        engine_args = dataclasses.replace(engine_args, usage_context="server")  # the server's step-budget default
        self.engine_args = engine_args
        self.max_pending_requests = max_pending_requests
        self.stat_loggers = list(stat_loggers)
        self.stats = StatsTracker()
        # The core starts first: its imports, config, CUDA set-up and model load (the critical path of
        # start-up) overlap the frontend's own config and tokenizer loading below.
        self.client = EngineCoreClient(engine_args, on_add=self.stats.on_add, on_abort=self.stats.on_abort)
        try:
            self.config = engine_args.create_config()  # a bad option raises here; the core is stopped
            self.engine = LLMEngine(self.config, core=self.client)  # loads the tokenizer while the core loads
            info = self.client.wait_ready(start_timeout_s)
        except BaseException:
            self.client.shutdown()
            raise
        self.config.cache.num_blocks = info["num_blocks"]
        self.stats.cache_config = self.config.cache  # for vllm:cache_config_info
        self._slots: dict[str, _Slot] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._output_task: asyncio.Task | None = None
        self.errored_reason: str | None = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, **kwargs: Any) -> "AsyncLLM":
        return cls(engine_args, **kwargs)

    # ---- state --------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_config(self) -> Any:
        return self.config.model

    @property
    def dead_error(self) -> str | None:
        return self.errored_reason or self.client.dead_error or (None if self.client.proc.is_alive() else
                                                                  "engine core process is not running")

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.stats.requests)

    def check_health(self) -> None:
        reason = self.dead_error
        if reason is not None:
            raise EngineDeadError(reason)

    # ---- requests -----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: Any, params: Any, priority: int = 0) -> RequestStream:
        """Validate and send one request; ValueError/TypeError for bad input, nothing registered then."""
        self.check_health()
        if request_id in self._slots:
            raise ValueError(f"request_id {request_id!r} is already in use")
        n = getattr(params, "n", 1) or 1
        if self.max_pending_requests is not None and self.num_unfinished_requests + n > self.max_pending_requests:
            raise EngineOverloadedError(
                f"the server has {self.num_unfinished_requests} unfinished requests, its limit is "
                f"{self.max_pending_requests}; retry later"
            )
        self._ensure_output_task()
        self.engine.add_request(request_id, prompt, params, priority)
        num_sequences = getattr(params, "num_sequences", 1)
        if num_sequences > 1:  # the children share one user request's n / longest-output stats
            self.stats.on_user_request([child_request_id(i, request_id, num_sequences) for i in range(num_sequences)],
                                       params.n)
        kind = getattr(params, "output_kind", None)
        slot = self._slots[request_id] = _Slot(delta=kind is not None and kind.name == "DELTA")
        return RequestStream(self, request_id, slot)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str,
                       priority: int = 0) -> AsyncIterator[RequestOutput]:
        """vLLM's AsyncLLM.generate: RequestOutputs until the finished one; aborts if the consumer leaves."""
        stream = self.add_request(request_id, prompt, sampling_params, priority)
        try:
            async for output in stream:
                yield output
        finally:
            stream.abort()

    encode = generate  # pooling requests travel the same path once the engine supports them

    def abort(self, request_id: str) -> None:
        """Abort a request (no-op if it is unknown or finished); its consumer gets RequestAbortedError."""
        slot = self._slots.pop(request_id, None)
        if slot is None:
            return
        slot.put(RequestAbortedError(f"request {request_id} was aborted"))
        self.engine.abort_request(request_id)
        logger.debug("aborted request %s", request_id)

    # ---- the output loop ----------------------------------------------------------------------
    def _ensure_output_task(self) -> None:
        if self._output_task is None or self._output_task.done():
            self._loop = asyncio.get_running_loop()
            self._output_task = self._loop.create_task(self._output_loop(), name="pagoda-output-loop")

    async def _output_loop(self) -> None:
        try:
            while True:
                message = await self.client.get_output()
                await self._process(message)
        except EngineDeadError as exc:
            self._fail_all(str(exc))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave requests hanging
            logger.exception("output processing failed; failing every open request")
            self.errored_reason = f"output processing failed: {type(exc).__name__}: {exc}"
            self._fail_all(self.errored_reason)

    async def _process(self, message: Any) -> None:
        now = time.time()
        self.stats.on_outputs(message, now)
        outputs = message.outputs
        processor = self.engine.output_processor
        for start in range(0, len(outputs), _OUTPUT_CHUNK):
            if start:
                await asyncio.sleep(0)
            request_outputs, to_abort = processor.process_outputs(outputs[start:start + _OUTPUT_CHUNK])
            if to_abort:
                self.stats.finish_by_stop_string(to_abort, now)
                self.client.abort_requests(to_abort)
            for output in request_outputs:
                slot = self._slots.get(output.request_id)
                if slot is not None:
                    slot.put(output)
                    if output.finished:
                        del self._slots[output.request_id]
        stats = self.stats.take()
        for stat_logger in self.stat_loggers:
            stat_logger.record(stats)

    def _fail_all(self, reason: str) -> None:
        error = EngineDeadError(reason)
        slots, self._slots = self._slots, {}
        for request_id, slot in slots.items():
            slot.put(error)
            self.engine.output_processor.abort_request(request_id)
        self.stats.clear()
        if slots:
            logger.error("failed %d open requests: %s", len(slots), reason)

    # ---- shutdown -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        if self._output_task is not None and not self._output_task.done():
            self._output_task.cancel()
        self.client.shutdown()
        self._fail_all("the engine was shut down")
