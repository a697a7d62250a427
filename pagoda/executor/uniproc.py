"""The single-process executor: one Worker in this process (world size 1).

The executor is the seam where multi-GPU execution plugs in (DESIGN §7): a multiprocess or Ray
executor offers the same calls and fans them out to one worker per rank.
"""

from __future__ import annotations

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

    def execute_model(self, sched: SchedulerOutput):
        """Launch a step: its StepOutput, or None when its sampling waits for sample_tokens()."""
        return self.worker.execute_model(sched)

    def sample_tokens(self, bitmask):
        """Sample the step execute_model left waiting, under the grammars' bitmask."""
        return self.worker.sample_tokens(bitmask)

    def shutdown(self) -> None:
        """Nothing to stop: the worker lives and dies with this process."""
