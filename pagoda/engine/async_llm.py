"""AsyncLLM: the server's engine — asyncio frontend here, EngineCore in its own process.

The frontend half of LLMEngine (Processor: tokenize and validate; OutputProcessor: detokenize, stop
strings, n > 1 fan-in) runs in this process on top of a CoreSupervisor (engine/core_supervisor.py),
which stands in for the in-process EngineCore and restarts the core process when it dies. One
asyncio task reads EngineCoreOutputs from the core and pushes each request's latest RequestOutput
into that request's slot (engine/request_stream.py); `generate()` reads its slot.

Invariants:
- Every request added ends for its consumer in exactly one of these ways: a finished RequestOutput;
  an exception (EngineDeadError when the core died after the request produced output or cannot be
  restarted, RequestFailedError when the engine failed this request alone, RequestTimeoutError past
  `request_timeout_s`, RequestCrashedEngineError for a request in flight at two crashes,
  RequestAbortedError when someone else aborted it); or the consumer leaving (cancellation,
  `aclose()`, or dropping the stream), which aborts it in the core so its KV blocks return to the pool.
- A slot holds at most one unread RequestOutput: a newer CUMULATIVE/FINAL_ONLY output replaces it and
  a DELTA one is merged into it, so a slow consumer costs one object per request, never a growing
  queue, and still sees every token exactly once.
- When the core dies (crash, kill, or declared unhealthy by the heartbeat watchdog), every message it
  sent is processed first; then each open request either fails with EngineDeadError (it has produced
  output), or is parked and resubmitted, with its own ids and stats timing, to the restarted core
  (it has produced nothing, so a replay is invisible); a request parked at a second crash in a row is
  refused with RequestCrashedEngineError. Requests failed this way leave the OutputProcessor and the
  StatsTracker at once; parked ones stay in both and keep counting against `max_pending_requests`.
  Without self-healing (`max_engine_restarts=0`) or once the restarts are used up, every open request
  fails within about a second; nothing waits forever.
- While the core is not READY (dead, unhealthy, restarting), or once `begin_drain()` was called
  (graceful shutdown), `dead_error` says why (what /health shows) and every new request raises
  EngineDeadError (EngineRestartingError during a restart) at once. `fatal_error` is set only when the
  engine cannot come back by itself (output processing failed, or the core's restarts are used up).
- The stat loggers hear of the engine going down (running, waiting and KV usage 0, engine_healthy 0)
  and coming back (engine_healthy 1, the restart count) from the output task, in order with the
  engine's own stats; the task runs from construction when there is a running event loop, else from
  the first request.
- At most `max_pending_requests` engine requests (n per user request) are unfinished at a time;
  beyond that `add_request` raises EngineOverloadedError and registers nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, AsyncIterator, Sequence

from pagoda.engine.core_client import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    DEFAULT_STALL_TIMEOUT_S,
    EngineDeadError,
    EngineStartError,
)
from pagoda.engine.core_supervisor import CoreSupervisor, EngineRestartingError, SupervisorState
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine.output_processor import child_request_id
from pagoda.engine.request_stream import (
    EngineOverloadedError,
    RequestAbortedError,
    RequestCrashedEngineError,
    RequestFailedError,
    RequestStream,
    RequestTimeoutError,
    Slot,
)
from pagoda.engine_args import EngineArgs
from pagoda.metrics.stats import StatsTracker
from pagoda.outputs import RequestOutput

logger = logging.getLogger(__name__)

__all__ = ["AsyncLLM", "EngineDeadError", "EngineRestartingError", "EngineStartError", "EngineOverloadedError",
           "RequestAbortedError", "RequestFailedError", "RequestTimeoutError", "RequestCrashedEngineError",
           "RequestStream"]

_OUTPUT_CHUNK = 512  # outputs processed between yields to the event loop
_RESTART_POLL_S = 0.1
_POISON_CRASHES = 2  # a request in flight at this many crashes in a row is refused, not replayed
_DOWN_STATS = {"num_running": 0, "num_waiting": 0, "kv_cache_usage": 0.0}


class AsyncLLM:
    def __init__(self, engine_args: EngineArgs, *, start_timeout_s: float = 600.0,
                 max_pending_requests: int | None = None, stat_loggers: Sequence[Any] = (),
                 request_timeout_s: float | None = None,
                 heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
                 engine_stall_timeout_s: float | None = DEFAULT_STALL_TIMEOUT_S,
                 max_engine_restarts: int = 5, engine_restart_window_s: float = 300.0,
                 engine_restart_backoff_s: float = 1.0, engine_restart_backoff_max_s: float = 30.0,
                 while_core_starts: Any = None) -> None:
        """`while_core_starts()`, when given, runs once the core process is spawned and this frontend is built
        (config, tokenizer), before waiting for the core to be ready: work there is off the start-up's critical
        path (the server imports its HTTP stack and freezes its heap there)."""
        if request_timeout_s is not None and not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0 or None (no deadline), got {request_timeout_s}")
        engine_args = dataclasses.replace(engine_args, usage_context="server")  # the server's step-budget default
        self.engine_args = engine_args
        self.max_pending_requests = max_pending_requests
        self.request_timeout_s = request_timeout_s
        self.stat_loggers = list(stat_loggers)
        self.stats = StatsTracker()
        self._sent: list | None = None  # engine requests sent by the add_request in progress
        # The core starts first: its imports, config, CUDA set-up and model load (the critical path of
        # start-up) overlap the frontend's own config and tokenizer loading below.
        self.core = CoreSupervisor(
            engine_args, on_add=self._on_core_add, on_abort=self.stats.on_abort, max_restarts=max_engine_restarts,
            restart_window_s=engine_restart_window_s, backoff_initial_s=engine_restart_backoff_s,
            backoff_max_s=engine_restart_backoff_max_s, start_timeout_s=start_timeout_s,
            client_kwargs={"heartbeat_timeout_s": heartbeat_timeout_s, "stall_timeout_s": engine_stall_timeout_s})
        try:
            self.config = engine_args.create_config()  # a bad option raises here; the core is stopped
            self.engine = LLMEngine(self.config, core=self.core)  # loads the tokenizer while the core loads
            if while_core_starts is not None:
                while_core_starts()
            info = self.core.wait_ready(start_timeout_s)
        except BaseException:
            self.core.shutdown()
            raise
        self.config.cache.num_blocks = info["num_blocks"]
        self.stats.cache_config = self.config.cache  # for vllm:cache_config_info
        self._slots: dict[str, Slot] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._output_task: asyncio.Task | None = None
        self._restarts_reported = 0
        self.errored_reason: str | None = None
        self.draining_reason: str | None = None  # set by begin_drain (graceful shutdown)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop yet: the output task starts with the first request
        self._ensure_output_task()

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
    def client(self) -> Any:
        """The current engine-core client (a new one after each restart)."""
        return self.core.client

    @property
    def dead_error(self) -> str | None:
        return self.errored_reason or self.draining_reason or self.core.dead_error

    @property
    def fatal_error(self) -> str | None:
        """Why this engine will not serve again by itself (what liveness reports); None while it is starting,
        ready, restarting its core or draining, since each of those ends without outside help."""
        if self.errored_reason is not None:
            return self.errored_reason
        if self.core.state == SupervisorState.FAILED:
            return self.core.dead_error
        return None

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.stats.requests)

    def check_health(self) -> None:
        if self.errored_reason is not None or self.draining_reason is not None:
            raise EngineDeadError(self.errored_reason or self.draining_reason)
        reason = self.core.dead_error
        if reason is not None:
            raise (EngineRestartingError if self.core.state == SupervisorState.RESTARTING else EngineDeadError)(reason)

    # ---- requests -----------------------------------------------------------------------------
    def _on_core_add(self, core_request: Any) -> None:
        self.stats.on_add(core_request)
        if self._sent is not None:
            self._sent.append(core_request)

    def add_request(self, request_id: str, prompt: Any, params: Any, priority: int = 0) -> RequestStream:
        """Validate and send one request; ValueError/TypeError for bad input, nothing registered then."""
        self.check_health()
        if request_id in self._slots:
            raise ValueError(f"request_id {request_id!r} is already in use")
        n = getattr(params, "num_sequences", None) or getattr(params, "n", 1) or 1  # best_of children count too
        if self.max_pending_requests is not None and self.num_unfinished_requests + n > self.max_pending_requests:
            raise EngineOverloadedError(
                f"the server has {self.num_unfinished_requests} unfinished requests, its limit is "
                f"{self.max_pending_requests}; retry later"
            )
        self._ensure_output_task()
        self._sent = [] if self.core.restarts_enabled else None
        try:
            self.engine.add_request(request_id, prompt, params, priority)
        except BaseException:
            self.engine.abort_request(request_id)  # children registered before the failure are forgotten
            raise
        finally:
            sent, self._sent = self._sent, None
        num_sequences = getattr(params, "num_sequences", 1)
        if num_sequences > 1:  # the children share one user request's n / longest-output stats
            self.stats.on_user_request([child_request_id(i, request_id, num_sequences) for i in range(num_sequences)],
                                       params.n)
        kind = getattr(params, "output_kind", None)
        slot = self._slots[request_id] = Slot(delta=kind is not None and kind.name == "DELTA")
        slot.core_requests = sent
        if self.request_timeout_s is not None:
            slot.timer = self._loop.call_later(self.request_timeout_s, self._expire, request_id, slot)
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
        if self._end(request_id, RequestAbortedError(f"request {request_id} was aborted")):
            logger.debug("aborted request %s", request_id, extra={"request_id": request_id})

    def _expire(self, request_id: str, slot: Slot) -> None:
        if self._slots.get(request_id) is not slot:
            return
        slot.timer = None
        logger.warning("request %s timed out after %g s (request_timeout_s); aborting it", request_id,
                       self.request_timeout_s, extra={"request_id": request_id})
        self._end(request_id, RequestTimeoutError(
            f"request {request_id} did not finish within the server's request timeout of {self.request_timeout_s:g} s "
            "and was aborted"))

    def _end(self, request_id: str, error: BaseException, in_core: bool = True) -> bool:
        """End a request for its consumer with `error`; forget it here and (`in_core`) abort it in the core."""
        slot = self._slots.pop(request_id, None)
        if slot is None:
            return False
        slot.close(error)
        if in_core:
            self.engine.abort_request(request_id)
        else:  # the core is gone: only the frontend's books change
            self.stats.fail(self.engine.output_processor.abort_request(request_id))
        return True

    # ---- the output loop ----------------------------------------------------------------------
    def _ensure_output_task(self) -> None:
        if self._output_task is None or self._output_task.done():
            self._loop = asyncio.get_running_loop()
            self._output_task = self._loop.create_task(self._output_loop(), name="pagoda-output-loop")

    async def _output_loop(self) -> None:
        try:
            while True:
                try:
                    message = await self.core.get_output()
                except EngineDeadError as exc:
                    if not await self._recover(str(exc), getattr(exc, "generation", self.core.generation)):
                        return
                    continue
                await self._process(message)
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
                self.core.abort_requests(to_abort)
            if processor.failed:
                self._fail_requests(processor.take_failed())
            for output in request_outputs:
                slot = self._slots.get(output.request_id)
                if slot is not None:
                    slot.put(output)
                    if output.finished:
                        del self._slots[output.request_id]
                        if slot.timer is not None:
                            slot.close()
        self._record(self.stats.take())

    def _record(self, stats: Any) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.record(stats)

    def _fail_requests(self, failed: list) -> None:
        """Requests with a child the engine failed: the whole user request ends with RequestFailedError."""
        still_running = [f.child_id for f in failed if f.running_in_core]
        if still_running:  # failed while processing its output here: the core still runs it
            self.stats.fail(still_running)
            self.core.abort_requests(still_running)
        for f in failed:
            if self._end(f.request_id, RequestFailedError(f"request {f.request_id} failed: {f.reason}")):
                logger.warning("request %s failed: %s", f.request_id, f.reason, extra={"request_id": f.request_id})

    def _fail_all(self, reason: str) -> None:
        error = EngineDeadError(reason)
        slots, self._slots = self._slots, {}
        for request_id, slot in slots.items():
            slot.close(error)
            self.stats.fail(self.engine.output_processor.abort_request(request_id))
        self.stats.clear()
        if slots:
            logger.error("failed %d open requests: %s", len(slots), reason)

    # ---- engine-core death and restart --------------------------------------------------------
    async def _recover(self, reason: str, generation: int) -> bool:
        """After every message of dead core `generation`: sort out its requests, wait for a restarted core
        (or the end of the restarts), resubmit the parked requests. False when there is no core to go on with."""
        self._report_health(False)
        if not self.core.restarts_enabled:
            self._fail_all(reason)
            return False
        parked = self._park_or_fail(reason)
        while not (self.core.state == SupervisorState.READY and self.core.generation != generation):
            if self.core.state == SupervisorState.FAILED or self.core.closing:
                self._fail_all(self.core.dead_error or reason)
                self._report_health(False)
                return False
            if self.core.num_restarts != self._restarts_reported:
                self._report_health(False)
            await asyncio.sleep(_RESTART_POLL_S)
        resent = self._resubmit(parked)
        self._report_health(True)
        if parked:
            logger.info("resubmitted %d of %d requests that had produced nothing to the restarted engine core",
                        resent, len(parked))
        return True

    def _park_or_fail(self, reason: str) -> list[str]:
        """Fail the open requests that produced output (or crashed the core twice); the ids of the rest."""
        parked, failed = [], 0
        for request_id, slot in list(self._slots.items()):
            if slot.core_requests and not self._has_output(request_id):
                slot.crashes += 1
                if slot.crashes < _POISON_CRASHES:
                    parked.append(request_id)
                    continue
                error: BaseException = RequestCrashedEngineError(
                    f"request {request_id} was in flight at {slot.crashes} engine-core crashes in a row and is "
                    f"refused, not replayed (it may be what crashes the engine); last crash: {reason}")
                logger.error("refusing request %s: in flight at %d engine-core crashes", request_id, slot.crashes,
                             extra={"request_id": request_id})
            else:
                error = EngineDeadError(reason)
            self._end(request_id, error, in_core=False)
            failed += 1
        if failed or parked:
            logger.error("engine core died (%s): %d requests failed, %d will be resubmitted", reason, failed,
                         len(parked))
        return parked

    def _has_output(self, request_id: str) -> bool:
        """Whether the request produced anything its consumer may have seen (tokens, prompt logprobs)."""
        processor = self.engine.output_processor
        parent = processor.parents.get(request_id)
        if parent is None:
            return request_id not in processor.pooling  # a pooling request shows nothing before its vector
        if parent.prompt_logprobs is not None and len(parent.prompt_logprobs) > 1:
            return True
        return any(c.token_ids or c.finish_reason is not None for c in parent.children)

    def _resubmit(self, parked: list[str]) -> int:
        resent = 0
        for request_id in parked:
            slot = self._slots.get(request_id)
            if slot is None:
                continue  # its consumer left, or it timed out, during the restart
            try:
                for core_request in slot.core_requests:
                    self.core.add_request(core_request, notify=False)
            except EngineDeadError:
                break  # the new core died already: the next recovery deals with what is left
            resent += 1
        return resent

    def _report_health(self, healthy: bool) -> None:
        stats = self.stats.take()
        stats.engine_healthy = healthy
        stats.engine_restarts = self._restarts_reported = self.core.num_restarts
        if not healthy:
            stats.scheduler_stats = dict(_DOWN_STATS)
        self._record(stats)

    # ---- shutdown -----------------------------------------------------------------------------
    def begin_drain(self, reason: str) -> None:
        """Stop admitting (graceful shutdown): new requests raise EngineDeadError(reason) and `dead_error`
        (so /health) says `reason`; the requests in flight run on."""
        self.draining_reason = reason

    def fail_all_requests(self, reason: str) -> int:
        """End every open request now with EngineDeadError(reason), aborting it in the core; how many."""
        request_ids = list(self._slots)
        for request_id in request_ids:
            self._end(request_id, EngineDeadError(reason))
        return len(request_ids)

    def shutdown(self) -> None:
        if self._output_task is not None and not self._output_task.done():
            self._output_task.cancel()
        self.core.shutdown()
        self._fail_all("the engine was shut down")
