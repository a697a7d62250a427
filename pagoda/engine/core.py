"""EngineCore: the loop that turns requests into tokens — schedule, execute, update.

Invariants:
- `step()` launches at most one forward pass and returns the per-request changes of one step. It
  is the only place where the scheduler and the executor meet.
- With async scheduling, step n+1 is scheduled and launched before step n's results are resolved
  (`in_flight`), so the device never waits for the host's bookkeeping; results come one call
  later. Without it, each call launches and resolves the same step.
- Structured output: a request with `structured_outputs` waits in `structured` (engine/structured_requests.py)
  until its grammar compiled, then enters the scheduler. A step with grammar requests is launched in two
  parts: the forward pass first; while it runs, the step in flight is resolved (its tokens reach the
  grammars) and the step's bitmask is built; then its sampling (`sample_tokens`). So the bitmask always
  reflects every earlier token, with async scheduling too. With async scheduling the bitmask is filled on
  the `_fill` thread while this thread returns the resolved step's outputs (`waiting`); the next step()
  samples it before it schedules or launches anything else, so the device still runs each step's sampling
  before the next forward. The engine thread touches no grammar of a step being filled
  (only update_from_output advances grammars, and it runs after that step's sampling).
- Pipeline parallelism (pp > 1): the core keeps up to pp steps in flight (`batch_queue`, oldest first), as
  vLLM does, so that stage 0 computes step n+1 while the last stage computes step n: it schedules and launches
  (the executor runs the driver's share on its own thread and returns futures) until the queue is full or a
  step came out empty, then resolves the oldest. The scheduler never puts a request in two steps in flight
  (core/scheduler.py), so no step waits for another's tokens. Structured-output steps compute their bitmask on
  this thread right after the launch (the grammars of their requests have seen every earlier token: their
  previous step was resolved before they were scheduled) and sample on the driver's thread after the forward.
- The KV cache can hold at least one max_model_len sequence, so a request running alone always
  fits and preemption can always make progress (checked at start-up).
- Request isolation. A failure that belongs to one request (adding it to the runner, building or
  applying its own sampling rules, its bookkeeping after the step) fails that request only, with
  finish_reason "error" and the reason in `EngineCoreOutput.error` (see ModelRunner and Scheduler).
  A failure of a batched operation that cannot be attributed (launching or resolving a step, e.g.
  the forward pass raising) fails every request of that step, the same way, and the engine goes on.
  After either, the state is consistent: a failed request is finished in the scheduler (its blocks
  back in the pool) and listed in the next step's `finished_req_ids`, so the runner drops its row;
  a step in flight is either resolved normally (its outputs for a failed request are ignored, as
  for any finished one) or itself failed; `in_flight` never refers to a step that failed to launch.
- A dead worker process (tensor parallelism: WorkerDiedError from the executor) fails every open request
  with finish_reason "error" and the reason; the core is then `dead`: it runs no further step and refuses
  new requests with that reason. A death the executor noted only after the step it broke had failed as an
  ordinary step (its collective raised first) makes the core dead at the next step, or through
  `check_workers()`, which the idle engine loop calls. `shutdown()` stops the executor's workers.
- Only a failure that corrupts the device or the process (`is_fatal`: CUDA/accelerator errors, device
  out-of-memory, MemoryError) propagates out of `step()`: the engine core then stops, and the server
  restarts it (engine/core_supervisor.py).

Test fault hook (off unless set; read once when an EngineCore is built, costing nothing per step):
`PAGODA_TEST_FAULT="<action>:<seed>[,<action>:<seed>...]"` gives every request added with that
`SamplingParams.seed` (children of n > 1 have seed + i) one extra logits processor, so the fault runs
inside that request's sampling, on the real isolation path: `raise` raises RuntimeError (the request
fails alone), `crash` kills the core process with SIGKILL (a hard crash while it is in flight), `hang`
blocks the engine loop forever (a stall while the process stays alive). Used by the reliability tests
of the server, which cannot send Python callables.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import signal
import sys
import time
from typing import Callable

from pagoda.config import PagodaConfig
from pagoda.core.request import EngineCoreRequest
from pagoda.core.sched_output import EngineCoreOutput, SchedulerOutput
from pagoda.core.scheduler import Scheduler
from pagoda.engine.structured_requests import StructuredRequests
from pagoda.executor import WorkerDiedError, make_executor

logger = logging.getLogger(__name__)

FAULT_ENV = "PAGODA_TEST_FAULT"
# Substrings of the messages of device errors that leave the device (or the process) unusable.
_FATAL_MESSAGES = ("CUDA error", "CUDA out of memory", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error",
                   "device-side assert", "NCCL error", "illegal memory access", "HIP error")


def is_fatal(exc: BaseException) -> bool:
    """Whether an exception from a step means the device or process can no longer be trusted."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        fatal_types = tuple(t for t in (getattr(torch, "AcceleratorError", None),
                                        getattr(torch, "OutOfMemoryError", None)) if isinstance(t, type))
        if fatal_types and isinstance(exc, fatal_types):
            return True
    message = str(exc)
    return any(text in message for text in _FATAL_MESSAGES)


class EngineCore:
    def __init__(self, config: PagodaConfig) -> None:
        started = time.perf_counter()
        self.config = config
        self.dead: str | None = None  # why the core can run no more steps (a worker process died)
        self.executor = make_executor(config)
        try:
            num_blocks = self._initialize_cache(config)
        except BaseException:
            self.executor.shutdown()
            raise
        block_size, max_len = config.cache.block_size, config.model.max_model_len
        pp = config.parallel.pipeline_parallel_size
        self.scheduler = Scheduler(config.scheduler, config.cache, getattr(config, "speculative", None),
                                   batch_queue_depth=pp)
        # pipeline parallelism: (SchedulerOutput, future StepOutput | None, future sampled StepOutput | None) of the
        # steps in flight, oldest first (see the module docstring); None with one stage
        self.batch_queue: collections.deque | None = collections.deque() if pp > 1 else None
        self.structured = StructuredRequests(config)  # structured-output requests whose grammar compiles
        self.in_flight = None  # (SchedulerOutput, StepOutput) of the step launched last, unresolved
        # (SchedulerOutput, future bitmask) of a step whose forward runs and whose grammars' bitmask is being
        # filled on `_fill` (async scheduling); sampled by the next step() (see the module docstring)
        self.waiting = None
        self._fill = None  # a one-thread pool, made for the first structured step
        # future AcceptedStep: the step in flight's tokens given to its grammars on `_fill` (async, no drafts)
        self.accepting = None
        # the grammar thread advances grammars only without speculative decoding (drafts are checked on this thread)
        self._defer_accepts = config.scheduler.async_scheduling and getattr(config, "speculative", None) is None
        self.num_scheduled_tokens = 0  # tokens of the step the last step() call launched (metrics)
        self._faults = parse_faults(os.environ.get(FAULT_ENV, ""))
        logger.info(
            "engine ready in %.1f s: %d KV blocks, max concurrency %.1fx at max_model_len %d",
            time.perf_counter() - started, num_blocks, num_blocks * block_size / max_len, max_len,
        )

    def _initialize_cache(self, config: PagodaConfig) -> int:
        num_blocks = self.executor.determine_num_blocks()
        block_size, max_len = config.cache.block_size, config.model.max_model_len
        if num_blocks * block_size < max_len:
            raise ValueError(
                f"the KV cache holds {num_blocks} blocks x {block_size} tokens = {num_blocks * block_size} "
                f"tokens, fewer than one max_model_len ({max_len}) sequence; lower max_model_len or give "
                "the cache more memory (gpu_memory_utilization, kv_cache_memory_bytes, num_gpu_blocks_override)"
            )
        config.cache.num_blocks = num_blocks
        self.executor.initialize_cache(num_blocks)
        return num_blocks

    def shutdown(self) -> None:
        """Stop the executor's worker processes (none with one rank); idempotent."""
        self.executor.shutdown()

    def add_request(self, request: EngineCoreRequest) -> None:
        if self.dead is not None:
            raise RuntimeError(f"the engine cannot run: {self.dead}")
        if self._faults:
            _inject_fault(self._faults, request)
        if request.request_id in self.scheduler.requests or request.request_id in self.structured.parked:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        if not self.structured.park(request):  # a structured one enters the scheduler once compiled
            self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> list[str]:
        parked = self.structured.abort(request_ids)
        return parked + self.scheduler.abort_requests([r for r in request_ids if r not in parked])

    def check_workers(self) -> list[EngineCoreOutput]:
        """Make the core dead (failing every open request) when its executor has lost a worker; nothing otherwise.
        For an idle core: the step that met the death may have failed as an ordinary step failure, the executor
        noting the death a moment later, and no later step would run to discover it."""
        lost = getattr(self.executor, "dead", None)
        if self.dead is not None or not isinstance(lost, str):
            return []
        return self._fail_all(lost)

    def has_unfinished_requests(self) -> bool:
        return (self.scheduler.has_unfinished_requests() or self.in_flight is not None or self.waiting is not None
                or bool(self.structured.parked) or bool(self.batch_queue))

    def step(self) -> list[EngineCoreOutput]:
        if self.dead is not None:
            return []
        if self.batch_queue is not None:
            return self._step_pipelined()
        launched = None
        failed: list[EngineCoreOutput] = []
        outputs: list[EngineCoreOutput] = []
        self.num_scheduled_tokens = 0
        if self.structured.parked:
            idle = not self.scheduler.has_unfinished_requests() and self.in_flight is None and self.waiting is None
            outputs = self.structured.admit(self.scheduler, wait=idle)
        if self.waiting is not None:  # its bitmask was filled while the last outputs went to the frontend
            failed += self._sample_waiting()
        sched = self.scheduler.schedule() if self.scheduler.has_unfinished_requests() else None
        if sched is not None:
            self.num_scheduled_tokens = sched.total_num_scheduled_tokens
            try:
                step = self.executor.execute_model(sched)
                if step is None:  # its sampling waits for the grammars' bitmask, after the step in flight
                    outputs += self._resolve_in_flight()
                    if self.config.scheduler.async_scheduling:
                        collected = self.structured.collect(self.scheduler, sched)
                        if self._fill is None:
                            self._fill = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar-fill")
                        prior, self.accepting = self.accepting, None
                        bitmask = self._fill.submit(self.structured.fill, collected, prior)
                        self.waiting = (sched, collected, bitmask, prior)
                    else:
                        step = self.executor.sample_tokens(self.structured.bitmask(self.scheduler, sched))
                if step is not None:
                    launched = (sched, step)
            except Exception as exc:  # noqa: BLE001 - see _fail_step: fatal errors are re-raised
                failed += self._fail_step(sched, exc, "running")
        outputs += self._resolve_in_flight()
        self.in_flight = launched
        if launched is not None and not self.config.scheduler.async_scheduling:
            self.in_flight = None
            outputs += self._resolve(*launched)
        return outputs + failed if failed else outputs

    def _step_pipelined(self) -> list[EngineCoreOutput]:
        """One call with pipeline parallelism: launch a step while fewer than pp are in flight; resolve the oldest
        once the queue is full, or when nothing new could be scheduled (see the module docstring)."""
        queue = self.batch_queue
        outputs: list[EngineCoreOutput] = []
        failed: list[EngineCoreOutput] = []
        self.num_scheduled_tokens = 0
        if self.structured.parked:
            outputs = self.structured.admit(self.scheduler, wait=not self.scheduler.has_unfinished_requests() and not queue)
        if len(queue) < self.scheduler.batch_queue_depth and self.scheduler.has_unfinished_requests():
            sched = self.scheduler.schedule()  # sent even when empty: it carries the finished requests to the ranks
            self.num_scheduled_tokens = sched.total_num_scheduled_tokens
            try:
                launched = self.executor.execute_model(sched, non_block=True)
                sampled = None
                if sched.structured_output_request_ids:
                    bitmask = self.structured.bitmask(self.scheduler, sched)
                    sampled = self.executor.sample_tokens(bitmask, non_block=True)
                queue.append((sched, launched, sampled))
            except Exception as exc:  # noqa: BLE001 - see _fail_step: fatal errors are re-raised
                failed += self._fail_step(sched, exc, "running")
            if self.dead is None and sched.total_num_scheduled_tokens and len(queue) < self.scheduler.batch_queue_depth:
                return outputs + failed  # launch the next step before waiting for the oldest
        if queue:
            sched, launched, sampled = queue.popleft()
            try:
                step = launched.result()
                sampled_step = sampled.result() if sampled is not None else None  # None unless `launched` waited
                step = step if step is not None else sampled_step
            except Exception as exc:  # noqa: BLE001 - see _fail_step
                failed += self._fail_step(sched, exc, "running")
            else:
                outputs += self._resolve(sched, step)
        return outputs + failed

    def _sample_waiting(self) -> list[EngineCoreOutput]:
        """Launch the sampling of the step whose bitmask was being filled; it becomes the step in flight (the one
        before it was resolved when the fill started). A failure fails that step's requests. Without drafts, the
        grammar thread then gives the step's tokens to its grammars as soon as they reach the host and fills the
        masks that follow (`accepting`, which the next structured step's fill reuses); update_from_output leaves
        those grammars alone."""
        (sched, collected, bitmask, prior), self.waiting = self.waiting, None
        failed: list[EngineCoreOutput] = []
        step = None
        try:
            step = self.executor.sample_tokens(bitmask.result())
        except Exception as exc:  # noqa: BLE001 - see _fail_step: fatal errors are re-raised
            failed = self._fail_step(sched, exc, "running")
        # the fill waited for `prior` (one thread, in order): its refusals are known
        refused = prior.result().refused if prior is not None else None
        if refused:  # never, unless a backend errs: the tokens were sampled under their masks
            failed += self.scheduler.fail_requests({request_id: f"updating request {request_id} after a step failed: "
                                                    f"ValueError: {reason}" for request_id, reason in refused.items()})
        if step is None:
            return failed
        self.in_flight = (sched, step)
        sampled_tokens = getattr(step, "sampled_tokens", None)
        if self._defer_accepts and sampled_tokens is not None:
            sched.grammar_accepts_deferred = True
            self.accepting = self._fill.submit(self.structured.accept, collected, sampled_tokens)
        return failed

    def _resolve_in_flight(self) -> list[EngineCoreOutput]:
        if self.in_flight is None:
            return []
        in_flight, self.in_flight = self.in_flight, None
        return self._resolve(*in_flight)

    def _resolve(self, sched: SchedulerOutput, result) -> list[EngineCoreOutput]:
        """Wait for a launched step and apply it; a failure there fails the step's requests."""
        try:
            return self.scheduler.update_from_output(sched, result.get())
        except Exception as exc:  # noqa: BLE001
            return self._fail_step(sched, exc, "finishing")

    def _fail_step(self, sched: SchedulerOutput, exc: Exception, stage: str) -> list[EngineCoreOutput]:
        """Fail every request of a step that failed as a whole; re-raise what makes the engine unusable."""
        if isinstance(exc, WorkerDiedError):
            return self._fail_all(str(exc))
        if is_fatal(exc):
            raise exc
        logger.exception("%s an engine step of %d requests failed; failing those requests (the engine goes on)",
                         stage, len(sched.num_scheduled_tokens))
        reason = f"{stage} the engine step that served this request failed: {type(exc).__name__}: {exc}"
        return self.scheduler.fail_requests({request_id: reason for request_id in sched.num_scheduled_tokens})

    def _fail_all(self, reason: str) -> list[EngineCoreOutput]:
        """A worker died: fail every open request (scheduled, waiting, compiling its grammar); the core is dead."""
        logger.error("%s: failing every open request; the engine runs no further step", reason)
        self.dead = reason
        self.in_flight = self.waiting = self.accepting = None
        if self.batch_queue is not None:
            self.batch_queue.clear()
        reason = f"the engine failed: {reason}"
        parked = self.structured.abort(list(self.structured.parked))
        outputs = [EngineCoreOutput(request_id=r, new_token_ids=[], finish_reason="error", error=reason)
                   for r in parked]
        return outputs + self.scheduler.fail_requests({r: reason for r in list(self.scheduler.requests)})


# ---- the test fault hook (see the module docstring) -----------------------------------------------
_FAULT_ACTIONS = ("raise", "crash", "hang")


def parse_faults(spec: str) -> dict[int, str]:
    """`"raise:7,crash:9"` -> {7: "raise", 9: "crash"}; "" -> {} (the hook is off)."""
    faults: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        action, _, seed = item.partition(":")
        if action not in _FAULT_ACTIONS or not seed.strip().lstrip("-").isdigit():
            raise ValueError(f"{FAULT_ENV}: each item must be <action>:<seed> with action one of "
                             f"{list(_FAULT_ACTIONS)}, got {item!r}")
        faults[int(seed)] = action
    if faults:
        logger.warning("%s is set: requests with seeds %s get injected faults (a test hook)", FAULT_ENV, faults)
    return faults


def _inject_fault(faults: dict[int, str], request: EngineCoreRequest) -> None:
    params = request.sampling_params
    action = faults.get(params.seed) if params is not None and params.seed is not None else None
    if action is None:
        return
    params.logits_processors = list(params.logits_processors or ()) + [_FAULTS[action]]


def _fault_raise(output_ids: list[int], logits):
    raise RuntimeError(f"{FAULT_ENV}: injected failure while sampling")


def _fault_crash(output_ids: list[int], logits):
    logger.error("%s: killing the engine core process (injected crash)", FAULT_ENV)
    os.kill(os.getpid(), signal.SIGKILL)


def _fault_hang(output_ids: list[int], logits):
    logger.error("%s: the engine loop hangs from now on (injected stall)", FAULT_ENV)
    while True:
        time.sleep(3600)


_FAULTS: dict[str, Callable] = {"raise": _fault_raise, "crash": _fault_crash, "hang": _fault_hang}
