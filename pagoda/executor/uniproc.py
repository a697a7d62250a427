"""The single-process executor: one Worker in this process (world size 1).

The executor is the seam where multi-GPU execution plugs in (DESIGN §7): a multiprocess or Ray
executor offers the same calls and fans them out to one worker per rank.
"""

from __future__ import annotations

import concurrent.futures

from pagoda.config import PagodaConfig
from pagoda.core.sched_output import SchedulerOutput
from pagoda.worker.worker import Worker


class UniProcExecutor:
    def __init__(self, config: PagodaConfig) -> None:
        self.worker = Worker(config)

    def determine_num_blocks(self) -> int:
        return self.worker.determine_num_blocks()

    def initialize_cache(self, num_blocks: int) -> None:
        self.worker.initialize_cache(num_blocks)

    def execute_model(self, sched: SchedulerOutput, non_block: bool = False):
        """Launch a step: its StepOutput, or None when its sampling waits for sample_tokens(). With `non_block`
        (the engine's pipeline-parallel loop; one rank never needs it) a finished future of the same."""
        if non_block:
            return _done(self.worker.execute_model, sched)
        return self.worker.execute_model(sched)

    def sample_tokens(self, bitmask, non_block: bool = False):
        """Sample the step execute_model left waiting, under the grammars' bitmask (`non_block`: a finished future,
        of None when no step waited)."""
        if non_block:
            return _done(self.worker.sample_tokens_if_deferred, bitmask)
        return self.worker.sample_tokens(bitmask)

    def shutdown(self) -> None:
        """Nothing to stop: the worker lives and dies with this process."""


def _done(fn, *args) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001 - the caller reads it from the future
        future.set_exception(exc)
    return future
