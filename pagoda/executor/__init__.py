"""Executors: how the engine core's calls reach the workers (one per rank).

Invariants:
- `make_executor(config)` is the only place an executor is chosen: one rank (or backend "uni") runs the
  single-process executor, which creates no process group; more ranks with backend None / "mp" run the
  multiprocessing executor (executor/multiproc.py), and with backend "ray" the Ray executor (executor/ray.py:
  Ray actors, on this node or a Ray cluster; Ray is imported only then). One rank needs no Ray: backend
  "ray" with world size 1 runs the single-process executor. "external_launcher" is refused earlier, by
  ParallelConfig, as not supported yet.
- Every executor offers determine_num_blocks, initialize_cache, execute_model, sample_tokens and
  shutdown, with the single-process executor's meaning.
"""

from __future__ import annotations

from pagoda.config import PagodaConfig


class WorkerDiedError(RuntimeError):
    """A worker process of the executor is gone: no further step can run (the engine fails every request)."""


def make_executor(config: PagodaConfig):
    if config.parallel.executor_backend == "ray" and config.parallel.world_size > 1:
        from pagoda.executor.ray import RayExecutor

        return RayExecutor(config)
    if config.parallel.executor_backend == "mp":
        from pagoda.executor.multiproc import MultiprocExecutor

        return MultiprocExecutor(config)
    from pagoda.executor.uniproc import UniProcExecutor

    return UniProcExecutor(config)
