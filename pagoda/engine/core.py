"""EngineCore: the loop that turns requests into tokens — schedule, execute, update.

Invariants:
- `step()` launches at most one forward pass and returns the per-request changes of one step. It
  is the only place where the scheduler and the executor meet.
- With async scheduling, step n+1 is scheduled and launched before step n's results are resolved
  (`in_flight`), so the device never waits for the host's bookkeeping; results come one call
  later. Without it, each call launches and resolves the same step.
- The KV cache can hold at least one max_model_len sequence, so a request running alone always
  fits and preemption can always make progress (checked at start-up).
"""

from __future__ import annotations

import logging
import time

from pagoda.config import PagodaConfig
from pagoda.core.request import EngineCoreRequest
from pagoda.core.sched_output import EngineCoreOutput
from pagoda.core.scheduler import Scheduler
from pagoda.executor.uniproc import UniProcExecutor

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, config: PagodaConfig) -> None:
        started = time.perf_counter()
        self.config = config
        self.executor = UniProcExecutor(config)
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
        self.scheduler = Scheduler(config.scheduler, config.cache)
        self.in_flight = None  # (SchedulerOutput, StepOutput) of the step launched last, unresolved
        self.num_scheduled_tokens = 0  # tokens of the step the last step() call launched (metrics)
        logger.info(
            "engine ready in %.1f s: %d KV blocks, max concurrency %.1fx at max_model_len %d",
            time.perf_counter() - started, num_blocks, num_blocks * block_size / max_len, max_len,
        )

    def add_request(self, request: EngineCoreRequest) -> None:
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> list[str]:
        return self.scheduler.abort_requests(request_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self.in_flight is not None

    def step(self) -> list[EngineCoreOutput]:
        launched = None
        self.num_scheduled_tokens = 0
        if self.scheduler.has_unfinished_requests():
            sched = self.scheduler.schedule()
            self.num_scheduled_tokens = sched.total_num_scheduled_tokens
            launched = (sched, self.executor.execute_model(sched))
        outputs: list[EngineCoreOutput] = []
        if self.in_flight is not None:
            sched, result = self.in_flight
            outputs = self.scheduler.update_from_output(sched, result.get())
        self.in_flight = launched
        if launched is not None and not self.config.scheduler.async_scheduling:
            outputs += self.scheduler.update_from_output(launched[0], launched[1].get())
            self.in_flight = None
        return outputs
