"""The Ray executor (distributed_executor_backend="ray"): the multiprocessing executor's workers as Ray actors in a
placement group, on this node or across the nodes of a Ray cluster (ray_utils.py: joining it, the group).

Invariants:
- One rank per placement-group bundle. The driver rank (ParallelConfig.driver_rank) runs in the engine core's
  process, so the engine reads its StepOutput handles as with one process; every other global rank is a
  RayWorker actor (ray_worker.py). Actors on this node take the driver's pipeline stage first.
- Every call is sent once: `ray.put((method, args))` makes one object and the same ObjectRef goes to every
  actor (Ray fetches it once per node; nothing is pickled per rank). Ray runs one caller's calls to an actor in
  the order sent, so the ranks run the same calls on the same SchedulerOutputs in the same order, with the same
  engine seed (chosen here when the user gave none): their states never diverge and no token is sent between
  ranks.
- Steps are fire-and-forget for the actors: the refs of the last KEEP_STEPS steps are kept and older ones
  collected as new ones come (refs never pile up); a step ref that fails means its actor died. Start-up calls
  (start, determine_num_blocks, initialize_cache) wait for every actor, and the engine gets the minimum block
  count over ranks.
- A dead actor never hangs the engine: a monitor thread watches the kept refs and records the first death
  (aborting NCCL on CUDA); gloo collectives raise when the peer's connection closes (or at the group's
  timeout); every call after a death raises WorkerDiedError, which the engine core turns into an error for
  every open request.
- The rendezvous store is on rank 0's node: 127.0.0.1 when every rank is on this node, else that node's IP
  (PAGODA_HOST_IP / VLLM_HOST_IP override the one Ray reports).
- `shutdown()` (also at interpreter exit and when the executor is collected) stops and kills the actors,
  removes the placement group it made and leaves the process group; it never shuts Ray down.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections import Counter

from pagoda.config import PagodaConfig
from pagoda.core.sched_output import SchedulerOutput
from pagoda.distributed import destroy_distributed, init_distributed
from pagoda.distributed.group import make_distributed_init
from pagoda.executor import WorkerDiedError
from pagoda.executor.common import (START_TIMEOUT_S, DriverThread, abort_nccl, collective_timeout_s, cpu_threads,
                                    run_driver_share, with_engine_seed)
from pagoda.executor.ray_utils import actor_env_vars, host_ip, import_ray, init_ray, rank_bundles
from pagoda.executor.ray_worker import RayWorker

logger = logging.getLogger(__name__)

KEEP_STEPS = 4  # steps whose refs (one per actor) are kept; the oldest is collected when a newer one is sent


class RayExecutor:
    def __init__(self, config: PagodaConfig) -> None:
        ray = import_ray()
        config = with_engine_seed(config)
        self.config = config
        self.world_size = config.parallel.world_size
        self.driver_rank = config.parallel.driver_rank
        self.dead: str | None = None  # why the executor cannot go on (an actor died)
        self.actors: list = []  # (rank, actor handle), by rank
        self._closed = False
        self._driver: DriverThread | None = None  # made for the first non-blocking call
        self._ray = ray
        self._pending: collections.deque = collections.deque()  # per step: [(rank, ref)]
        self._lock = threading.Lock()
        init_ray(ray)
        cuda = config.device.device == "cuda"
        bundles = rank_bundles(ray, self.world_size, cuda)
        # what the finalizer releases (it must not hold the executor)
        self._state = {"actors": [], "group": bundles.group if bundles.owned else None, "graceful": True}
        self._finalizer = weakref.finalize(self, _release, ray, self._state)
        try:
            self._start(bundles, cuda)
        except BaseException:
            self.shutdown()
            raise
        self._monitor = threading.Thread(target=_watch_actors, args=(weakref.ref(self), ray, cuda),
                                         name="ray-actor-monitor", daemon=True)
        self._monitor.start()

    def _start(self, bundles, cuda: bool) -> None:
        ray, config = self._ray, self.config
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor_class = ray.remote(RayWorker)
        level = logging.getLogger().getEffectiveLevel()
        runtime_env = {"env_vars": actor_env_vars()}

        def make(bundle: int):
            strategy = PlacementGroupSchedulingStrategy(bundles.group, placement_group_bundle_index=bundle,
                                                        placement_group_capture_child_tasks=True)
            actor = actor_class.options(num_cpus=0, num_gpus=1 if cuda else 0, scheduling_strategy=strategy,
                                        runtime_env=runtime_env).remote(level)
            self._state["actors"].append(actor)
            return actor

        actors = [make(bundle) for bundle in bundles.others]
        holder = make(bundles.driver) if cuda else None  # holds the driver's GPU, so that no actor gets it
        everyone = actors + ([holder] if holder is not None else [])
        infos = self._collect([(None, actor.node_info.remote()) for actor in everyone], "node_info")
        node = ray.get_runtime_context().get_node_id()
        tp = config.parallel.tensor_parallel_size
        stage = range(self.driver_rank, self.driver_rank + tp)
        ranks = [r for r in stage if r != self.driver_rank] + [r for r in range(self.world_size) if r not in stage]
        order = sorted(range(len(actors)), key=lambda i: (infos[i]["node_id"] != node, infos[i]["node_id"]))
        placed = sorted((ranks[k], actors[i], infos[i]) for k, i in enumerate(order))
        self.actors = [(rank, actor) for rank, actor, _ in placed]
        per_node = Counter([node] + [info["node_id"] for _, _, info in placed])
        timeout = collective_timeout_s()
        one_node = len(per_node) == 1
        init = make_distributed_init(config.parallel, config.device.device, "127.0.0.1" if one_node else host_ip(ray),
                                     timeout)
        rank0 = next(((actor, info) for rank, actor, info in placed if rank == 0), None)
        if rank0 is not None and not one_node:  # the store is served by rank 0: a port free on its node
            actor, info = rank0
            port = self._collect([(0, actor.free_port.remote(info["ip"]))], "free_port")[0]
            init = dataclasses.replace(init, init_method=f"tcp://{info['ip']}:{port}")
        logger.info("Ray executor: %d ranks (%s at %s) on %d node(s); driver rank %d, actors %s", self.world_size,
                    init.backend, init.init_method, len(per_node), self.driver_rank,
                    {rank: f"{info['ip']}:{info['pid']}" for rank, _, info in placed})
        config_ref = ray.put(config)  # one copy for every actor
        starts = [(rank, actor.start.remote(config_ref, rank, init,
                                            cpu_threads(per_node[info["node_id"]], info["cpus"])))
                  for rank, actor, info in placed]
        import torch

        if cuda:
            torch.cuda.set_device(_driver_device(infos[-1]["gpu_ids"]))
        else:
            torch.set_num_threads(max(1, min(torch.get_num_threads(), cpu_threads(per_node[node]))))
        init_distributed(init, self.driver_rank)
        from pagoda.worker.worker import Worker

        self.worker = Worker(config, rank=self.driver_rank)
        self._collect(starts, "start")

    # ---- the executor interface (uniproc.py's) -----------------------------------------------------
    def determine_num_blocks(self) -> int:
        refs = self._send("determine_num_blocks", ())
        own = run_driver_share(self, self.worker.determine_num_blocks)
        others = self._collect(refs, "determine_num_blocks")
        if others and min(others) < own:
            logger.info("KV cache: %d blocks on the driver rank, %s on the others; using the minimum", own, others)
        return min([own, *others])

    def initialize_cache(self, num_blocks: int) -> None:
        refs = self._send("initialize_cache", (num_blocks,))
        run_driver_share(self, self.worker.initialize_cache, num_blocks)
        self._collect(refs, "initialize_cache")

    def execute_model(self, sched: SchedulerOutput, non_block: bool = False):
        """As MultiprocExecutor.execute_model."""
        self._send("execute_model", (sched,), step=True)
        if non_block:
            return self._driver_thread().submit(self.worker.execute_model, sched)
        return run_driver_share(self, self.worker.execute_model, sched)

    def sample_tokens(self, bitmask, non_block: bool = False):
        """As MultiprocExecutor.sample_tokens."""
        if non_block:
            self._send("sample_tokens_if_deferred", (bitmask,), step=True)
            return self._driver_thread().submit(self.worker.sample_tokens_if_deferred, bitmask)
        self._send("sample_tokens", (bitmask,), step=True)
        return run_driver_share(self, self.worker.sample_tokens, bitmask)

    def _driver_thread(self) -> DriverThread:
        if self._driver is None:
            self._driver = DriverThread(self, self.config.device.device == "cuda")
        return self._driver

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._driver is not None:
            self._driver.shutdown()
        with self._lock:
            self._pending.clear()
        self._finalizer()

    # ---- calls and faults ------------------------------------------------------------------------
    def _send(self, method: str, args: tuple, step: bool = False) -> list:
        """Send one call to every actor: one object in Ray's store, its ref to each; [(rank, result ref)]."""
        self._check_alive()
        message = self._ray.put((method, args))
        refs = [(rank, (actor.step if step else actor.run).remote(message)) for rank, actor in self.actors]
        if step:
            with self._lock:
                self._pending.append(refs)
                old = self._pending.popleft() if len(self._pending) > KEEP_STEPS else None
            if old is not None:
                self._collect(old, "a step")
        return refs

    def _collect(self, refs: list, method: str, timeout_s: float = START_TIMEOUT_S) -> list:
        """The results of [(rank, ref)] in order, raising an actor's error, or WorkerDiedError for a dead one."""
        ray = self._ray
        results = []
        for rank, ref in refs:
            who = "a Ray actor" if rank is None else f"the Ray actor of rank {rank}"
            try:
                results.append(ray.get(ref, timeout=timeout_s))
            except ray.exceptions.RayActorError as exc:
                self._note_death(rank, exc)
                raise WorkerDiedError(self.dead or f"{who} died during {method}") from exc
            except ray.exceptions.GetTimeoutError as exc:
                raise WorkerDiedError(f"{who} did not answer {method} in {timeout_s:.0f} s") from exc
            except ray.exceptions.RayTaskError as exc:
                raise RuntimeError(f"{who} failed in {method}: {_message(exc)}") from None
        return results

    def _check_alive(self) -> None:
        if self.dead is not None:
            raise WorkerDiedError(self.dead)
        if self._closed:
            raise WorkerDiedError("the executor was shut down")

    def _pending_refs(self) -> list:
        with self._lock:
            return [pair for step in self._pending for pair in step]

    def _wait_for_death(self, timeout_s: float = 1.0) -> bool:
        """Whether an actor is dead (waiting up to `timeout_s` for a kept step ref to fail)."""
        if self.dead is None:
            found = _find_death(self._ray, self._pending_refs(), timeout_s)
            if found is not None:
                self._note_death(*found)
        return self.dead is not None

    def _note_death(self, rank, exc: BaseException) -> None:
        if self.dead is None and not self._stopping:
            self.dead = f"the Ray actor of {'a rank' if rank is None else f'rank {rank}'} died ({_message(exc)})"
            self._state["graceful"] = False
            logger.error("%s; the engine cannot run further steps", self.dead)

    @property
    def _stopping(self) -> bool:
        return self._closed or not self._finalizer.alive  # shut down, or the interpreter is exiting


def _find_death(ray, refs: list, timeout_s: float):
    """(rank, error) of the first of [(rank, ref)] that fails as a dead actor within `timeout_s`, else None."""
    deadline = time.monotonic() + timeout_s
    waiting = {ref: rank for rank, ref in refs}
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        for ref in ready:
            rank = waiting.pop(ref)
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError as exc:
                return rank, exc
            except Exception:  # noqa: BLE001 - a start-up call's own error: its caller reports it
                pass
    return None


def _watch_actors(executor_ref, ray, cuda: bool) -> None:
    """Record the first actor death on the executor (see the module docstring); ends with the executor."""
    while True:
        executor = executor_ref()
        if executor is None or executor._stopping or executor.dead is not None:
            return
        refs = executor._pending_refs()
        del executor  # not held while waiting: an executor nobody references is collected (and stops its actors)
        try:
            found = _find_death(ray, refs, 1.0) if refs else None
        except Exception:  # noqa: BLE001 - Ray itself was shut down under a live executor
            logger.debug("the Ray actor monitor stops", exc_info=True)
            return
        del refs
        if found is not None:
            executor = executor_ref()
            if executor is None:
                return
            executor._note_death(*found)
            if cuda and executor.dead is not None:
                abort_nccl()  # NCCL kernels waiting for the dead peer would spin for ever
            return
        time.sleep(0.5)


def _driver_device(gpu_ids: list) -> int:
    """The driver's CUDA index: the GPU Ray gave its bundle's holder, among this process's visible devices."""
    gpu = gpu_ids[0] if gpu_ids else "0"
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return int(gpu) if gpu.isdigit() else 0
    if gpu in visible:
        return visible.index(gpu)
    logger.warning("Ray gave the driver's bundle GPU %s, which is not in CUDA_VISIBLE_DEVICES=%s; using cuda:0",
                   gpu, ",".join(visible))
    return 0


def _message(exc: BaseException) -> str:
    """A Ray error in one line: a failed call's own exception, else the first line of Ray's text."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _release(ray, state: dict) -> None:
    """The executor's finalizer (shutdown, garbage collection, interpreter exit): stop and kill the actors, remove
    the placement group made for them, then leave the process group (a later engine starts from a single
    process's state)."""
    try:
        if ray.is_initialized():  # else Ray is gone already, and its actors with it
            actors = state["actors"]
            if state["graceful"] and actors:
                stops = [actor.stop.remote() for actor in actors]
                ray.wait(stops, num_returns=len(stops), timeout=5.0)
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if state["group"] is not None:
                from ray.util import remove_placement_group

                remove_placement_group(state["group"])
    except Exception:  # noqa: BLE001 - best effort at shutdown
        logger.debug("stopping the Ray actors failed", exc_info=True)
    state["actors"].clear()
    destroy_distributed()
