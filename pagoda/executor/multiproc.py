"""The multiprocessing executor: tensor and pipeline parallelism over one process per rank on this node.

The driver is the first rank of the last pipeline stage (config.ParallelConfig.driver_rank; rank 0 without
pipeline parallelism): its Worker lives in the engine core's process, so the engine reads the StepOutput
handles of a rank that samples, exactly as with the single-process executor. Every other rank is a process
of the "spawn" context (CUDA is never forked), each running `_worker_main`: set its device by global rank
(indices are relative to CUDA_VISIBLE_DEVICES), join the process group, build the same Worker, then run the
calls the driver sends, in order.

Invariants:
- Every executor call is broadcast before the driver runs it itself: ONE pickled message per call,
  the same bytes written to every rank's pipe (not a pickle per rank or per request). The ranks run
  the same calls on the same SchedulerOutputs in the same order, so their runners' states never
  diverge: every rank of the last stage computes the full logits (all_gather in compute_logits) and
  samples them with the same generators (one engine seed on every rank, chosen here when the user gave
  none); the earlier stages take the last stage's sampled ids (worker/pipeline_stage.py).
- Steps are fire-and-forget for ranks > 0 (their results are dropped); only start-up calls
  (`_READY`, determine_num_blocks, initialize_cache) wait for every rank's reply, and the engine gets
  the minimum block count over ranks (each sizes its cache from its own KV heads).
- A dead rank never hangs the engine: a monitor thread watches every worker's process sentinel and
  records the death; a write to its pipe fails, gloo collectives raise when the peer's connection
  closes (or at the group's timeout), and every call after a death raises WorkerDiedError, which the
  engine core turns into an error for every open request (engine/core.py).
- `shutdown()` (also run at interpreter exit and when the executor is collected) asks each worker to
  stop, then terminates and finally kills those still alive; a worker exits by itself when its parent
  dies, so no worker outlives the engine.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
import weakref
from multiprocessing.connection import wait

from pagoda.config import PagodaConfig
from pagoda.core.sched_output import SchedulerOutput
from pagoda.distributed import DistributedInit, destroy_distributed, init_distributed, make_distributed_init
from pagoda.distributed.group import dumps
from pagoda.executor import WorkerDiedError
from pagoda.executor.common import (START_TIMEOUT_S, DriverThread, abort_nccl, collective_timeout_s, cpu_threads,
                                    run_driver_share, with_engine_seed)

logger = logging.getLogger(__name__)

_STARTED, _READY, _SHUTDOWN = "_started", "_ready", "_shutdown"
# why a worker that dies before it started usually did
_SPAWN_HINT = ("workers are started with multiprocessing's 'spawn' method, which re-imports the main script: "
               "a script that builds an LLM at module level must do it under `if __name__ == \"__main__\":`")


class MultiprocExecutor:
    def __init__(self, config: PagodaConfig) -> None:
        parallel = config.parallel
        world, self.driver_rank = parallel.world_size, parallel.driver_rank
        config = with_engine_seed(config)
        self.config = config
        self.world_size = world
        self.dead: str | None = None  # why the executor cannot go on (a worker died)
        self._closed = False
        self._driver: DriverThread | None = None  # made for the first non-blocking call
        cuda = config.device.device == "cuda"
        timeout = collective_timeout_s()
        init = make_distributed_init(parallel, config.device.device, timeout_s=timeout)
        ctx = multiprocessing.get_context("spawn")
        self.procs: list = []
        self.ranks = [rank for rank in range(world) if rank != self.driver_rank]  # of procs, in order
        self.cmd_conns: list = []  # driver -> each rank of self.ranks
        self.reply_conns: list = []  # each rank of self.ranks -> driver
        for rank in self.ranks:
            cmd_recv, cmd_send = ctx.Pipe(duplex=False)
            reply_recv, reply_send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(config, rank, init, cmd_recv, reply_send,
                                                              logging.getLogger().getEffectiveLevel()),
                               name=_rank_name(rank, parallel.tensor_parallel_size, parallel.pipeline_parallel_size),
                               daemon=True)
            proc.start()
            cmd_recv.close()
            reply_send.close()
            self.procs.append(proc)
            self.cmd_conns.append(cmd_send)
            self.reply_conns.append(reply_recv)
        self._finalizer = weakref.finalize(self, _release, self.procs, self.cmd_conns)
        # the thread holds the executor weakly, so that an executor nobody references is collected (and its
        # finalizer stops the workers)
        self._monitor = threading.Thread(target=_watch_workers, args=(weakref.ref(self), [p.sentinel for p in self.procs]),
                                         name="tp-worker-monitor", daemon=True)
        self._monitor.start()
        logger.info("parallelism: %d ranks (tp=%d x pp=%d, %s), the driver is rank %d, workers %s", world,
                    parallel.tensor_parallel_size, parallel.pipeline_parallel_size, init.backend, self.driver_rank,
                    [p.pid for p in self.procs])
        try:
            if cuda:
                import torch

                torch.cuda.set_device(self.driver_rank)
            else:
                _share_cpus(world)
            self._collect(_STARTED)  # every worker runs (a spawn that fails to import dies here, not in the rendezvous)
            init_distributed(init, self.driver_rank)
            from pagoda.worker.worker import Worker

            self.worker = Worker(config, rank=self.driver_rank)
            self._collect(_READY)
        except BaseException:
            self.shutdown()
            raise

    # ---- the executor interface (uniproc.py's) -----------------------------------------------------
    def determine_num_blocks(self) -> int:
        self._broadcast("determine_num_blocks", (), reply=True)
        own = self.worker.determine_num_blocks()
        others = self._collect("determine_num_blocks")
        if others and min(others) < own:
            logger.info("KV cache: %d blocks on the driver (rank %d), %s on ranks %s; using the minimum", own,
                        self.driver_rank, others, self.ranks)
        return min([own, *others])

    def initialize_cache(self, num_blocks: int) -> None:
        self._broadcast("initialize_cache", (num_blocks,), reply=True)
        run_driver_share(self, self.worker.initialize_cache, num_blocks)
        self._collect("initialize_cache")

    def execute_model(self, sched: SchedulerOutput, non_block: bool = False):
        """The step's StepOutput (None: its sampling waits for sample_tokens), or with `non_block` a future of it
        (pipeline parallelism: the driver's share runs on the driver thread)."""
        self._broadcast("execute_model", (sched,))
        if non_block:
            return self._driver_thread().submit(self.worker.execute_model, sched)
        return run_driver_share(self, self.worker.execute_model, sched)

    def sample_tokens(self, bitmask, non_block: bool = False):
        """Sample the step left waiting; with `non_block`, a future, and nothing is sampled (the future gives None)
        when that step did not wait (see Worker.sample_tokens_if_deferred)."""
        if non_block:
            self._broadcast("sample_tokens_if_deferred", (bitmask,))
            return self._driver_thread().submit(self.worker.sample_tokens_if_deferred, bitmask)
        self._broadcast("sample_tokens", (bitmask,))
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
        self._finalizer()

    # ---- messages and faults --------------------------------------------------------------------
    def _broadcast(self, method: str, args: tuple, reply: bool = False) -> None:
        self._check_alive()
        data = dumps((method, args, reply))  # one pickle for every rank
        try:
            for conn in self.cmd_conns:
                conn.send_bytes(data)
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            self._wait_for_death()
            raise WorkerDiedError(self.dead or f"sending {method} to a worker failed: {exc}") from exc

    def _collect(self, method: str) -> list:
        """Every other rank's reply to `method` (raising its error, or WorkerDiedError)."""
        results = []
        for rank, proc, conn in zip(self.ranks, self.procs, self.reply_conns):
            ready = wait([conn, proc.sentinel], timeout=START_TIMEOUT_S)
            if conn not in ready or (method == _STARTED and not conn.poll()):
                self._wait_for_death()
                if method == _STARTED and self.dead:
                    raise WorkerDiedError(f"{self.dead} while starting; {_SPAWN_HINT}")
                raise WorkerDiedError(self.dead or f"worker rank {rank} did not answer {method} in "
                                      f"{START_TIMEOUT_S:.0f} s")
            try:
                status, value = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError) as exc:
                self._wait_for_death()
                raise WorkerDiedError(self.dead or f"rank {rank} closed its pipe during {method}") from exc
            if status != "ok":
                raise RuntimeError(f"worker rank {rank} failed in {method}: {value}")
            results.append(value)
        return results

    def _check_alive(self) -> None:
        if self.dead is not None:
            raise WorkerDiedError(self.dead)
        if self._closed:
            raise WorkerDiedError("the executor was shut down")

    def _wait_for_death(self, timeout_s: float = 1.0) -> bool:
        """Whether a worker is dead (waiting up to `timeout_s` for its sentinel)."""
        if self.dead is None and self.procs:
            ready = wait([p.sentinel for p in self.procs], timeout=timeout_s)
            for proc in self.procs:
                if proc.sentinel in ready:  # its pipes close a moment before the process can be reaped
                    proc.join(timeout=max(timeout_s, 1.0))
            self._note_deaths()
        return self.dead is not None

    def _note_deaths(self) -> None:
        for rank, proc in zip(self.ranks, self.procs):
            if self.dead is None and proc.exitcode is not None and not self._stopping:
                self.dead = (f"worker rank {rank} (pid {proc.pid}) died with exit code "
                             f"{proc.exitcode}")
                logger.error("%s; the engine cannot run further steps", self.dead)

    @property
    def _stopping(self) -> bool:
        return self._closed or not self._finalizer.alive  # shut down, or the interpreter is exiting


def _watch_workers(executor_ref, sentinels: list) -> None:
    """Record the first worker death on the executor (see the module docstring); ends with the executor."""
    while sentinels:
        wait(sentinels, timeout=1.0)
        executor = executor_ref()
        if executor is None or executor._stopping:
            return
        executor._note_deaths()
        if executor.dead is not None:
            if executor.config.device.device == "cuda":
                abort_nccl()  # NCCL kernels waiting for the dead peer would spin for ever
            return
        del executor


def _rank_name(rank: int, tp: int, pp: int) -> str:
    if pp == 1:
        return f"PagodaWorker-TP{rank}"
    return f"PagodaWorker-PP{rank // tp}-TP{rank % tp}"


def _share_cpus(world_size: int) -> None:
    """On CPU the ranks share the machine's cores: each takes its share of torch threads (OpenMP threads
    spin; oversubscribed ranks slow every collective). An explicit OMP_NUM_THREADS wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), cpu_threads(world_size)))


def _release(procs: list, conns: list) -> None:
    """The executor's finalizer (shutdown, garbage collection, interpreter exit): stop the workers, then leave
    the process group, so that a later engine in this process starts from the single-process state."""
    _stop_workers(procs, conns)
    destroy_distributed()


def _stop_workers(procs: list, conns: list, grace_s: float = 5.0) -> None:
    """Ask every worker to stop, then terminate and kill what is left (idempotent; runs at exit too)."""
    data = pickle.dumps((_SHUTDOWN, (), False))
    for proc, conn in zip(procs, conns):
        if proc.exitcode is None:
            try:
                conn.send_bytes(data)
            except (OSError, ValueError):
                pass
        conn.close()
    for signal_fn in (None, "terminate", "kill"):
        alive = [p for p in procs if p.exitcode is None]
        if not alive:
            return
        for proc in alive:
            if signal_fn is not None:
                getattr(proc, signal_fn)()
        wait([p.sentinel for p in alive], timeout=grace_s if signal_fn is None else 2.0)
    for proc in procs:
        proc.join(timeout=0)


# ---- the worker process ----------------------------------------------------------------------------------
def _worker_main(config: PagodaConfig, rank: int, init: DistributedInit, cmd_conn, reply_conn, log_level: int) -> None:
    """Rank `rank`'s process: join the group, build the Worker, run the driver's calls until told to stop."""
    logging.basicConfig(level=log_level,
                        format=f"%(levelname)s %(asctime)s [rank{rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    _exit_with_parent()
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the driver stops us
    _reply(reply_conn, "ok", None)  # _STARTED
    try:
        import torch

        if config.device.device == "cuda":
            torch.cuda.set_device(rank)
        else:
            _share_cpus(init.world_size)
        init_distributed(init, rank)
        from pagoda.worker.worker import Worker

        worker = Worker(config, rank=rank)
    except BaseException as exc:  # noqa: BLE001 - the driver must hear why
        logger.exception("rank %d failed to start", rank)
        _reply(reply_conn, "error", f"{type(exc).__name__}: {exc}")
        os._exit(1)
    _reply(reply_conn, "ok", None)
    _serve(worker, rank, cmd_conn, reply_conn)
    destroy_distributed()
    os._exit(0)


_FATAL = ("CUDA error", "CUDA out of memory", "NCCL", "illegal memory access", "device-side assert")


def _serve(worker, rank: int, cmd_conn, reply_conn) -> None:
    while True:
        try:
            method, args, reply = pickle.loads(cmd_conn.recv_bytes())
        except (EOFError, OSError):
            return  # the driver is gone
        if method == _SHUTDOWN:
            return
        try:
            result = getattr(worker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the driver runs the same call and sees the same error
            logger.exception("rank %d: %s failed", rank, method)
            if reply:
                _reply(reply_conn, "error", f"{type(exc).__name__}: {exc}")
            if reply or isinstance(exc, MemoryError) or any(text in str(exc) for text in _FATAL):
                os._exit(1)
            continue
        if reply:
            _reply(reply_conn, "ok", result if method == "determine_num_blocks" else None)


def _reply(conn, status: str, value) -> None:
    try:
        conn.send_bytes(pickle.dumps((status, value)))
    except OSError:
        pass


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
