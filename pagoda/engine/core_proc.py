"""The engine-core process: an EngineCore behind two ZMQ sockets, stepping while there is work.

Wire protocol (every message is a multipart [kind, payload], payload encoded by `engine.serial`):

    frontend → core   ADD      EngineCoreRequest
                      ABORT    list of request ids
                      SHUTDOWN None
    core → frontend   READY    {"num_blocks": int, "pid": int}          (once, after the model loads)
                      OUTPUTS  EngineCoreOutputs                         (after every step or abort)
    core → frontend   HEARTBEAT {"steps": int, "busy": bool}             (third socket, every ~1 s)

Threads: one thread receives and decodes input, one encodes and sends output, one sends the
heartbeat, and the main thread runs the busy loop, so (de)serialization overlaps the forward pass.

Invariants:
- The main loop blocks on input only when the core has no unfinished request; otherwise it drains
  whatever input has arrived and runs one `EngineCore.step()`.
- After any step or abort an OUTPUTS message goes out, carrying the scheduler's stats, so the
  frontend's gauges (running, waiting, KV-cache usage) are never stale while anything changes.
  The message after a step also carries the number of tokens that step scheduled (each launched
  step is counted in exactly one message), for the tokens-per-step histogram.
- A failure (at start-up or later) is logged with its traceback and its one-line reason is written
  to `error_path` before the process exits with a non-zero code; the frontend reads it from there.
- The process exits when its parent (the frontend) dies, so a killed server leaves no orphan, and
  removes the frontend's socket folder on the way out.
- It logs to stdout in the frontend's log format (logging_utils.py: PAGODA_LOG_FORMAT is inherited).
- A dead tensor-parallel worker (EngineCore.dead) ends the process with an error after the step that failed
  every open request was sent, so the supervisor restarts the core (its workers with it) or reports it dead;
  an idle core finds a death its executor noted within a second (EngineCore.check_workers).
- On CPU the core runs torch with one thread fewer than the CPUs it may use (unless OMP_NUM_THREADS
  says otherwise), so the frontend always has a core to stream on.
- Heartbeat: from READY on, a thread of its own sends `steps` (engine steps run so far, an int the
  busy loop bumps once per step: the only per-step cost) and `busy` (whether the core has work) on
  its own socket about every HEARTBEAT_INTERVAL_S, whatever the main loop is doing. No heartbeat
  means the whole process is stopped or hung; heartbeats with `busy` and a still `steps` mean the
  loop is stuck inside a step. The frontend's watchdog (core_client.py) judges both.
- A request the core cannot take (a duplicate id, anything `add_request` raises) is answered with an
  output of finish_reason "error" naming the reason; the engine carries on.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from pagoda.engine import gc_debug
from pagoda.engine.gc_control import IdleCollector, deferred_full_collections, freeze_startup_heap

logger = logging.getLogger(__name__)

ADD, ABORT, SHUTDOWN = b"A", b"X", b"S"
READY, OUTPUTS, HEARTBEAT = b"R", b"O", b"H"
_IDLE_WAIT_S = 1.0
HEARTBEAT_INTERVAL_S = 1.0


@dataclass
class EngineCoreOutputs:
    """One message from the core: a step's outputs plus the scheduler's state after it."""

    outputs: list = field(default_factory=list)  # list[EngineCoreOutput]
    stats: dict = field(default_factory=dict)  # Scheduler.stats()
    queue_times: dict = field(default_factory=dict)  # request id -> seconds it waited before first scheduled
    timestamp: float = 0.0
    num_scheduled_tokens: int = 0  # tokens of the step launched just before this message (0: none)


def run_engine_core(engine_args: Any, input_addr: str, output_addr: str, error_path: str, log_level: int,
                    spawned_at: float | None = None, heartbeat_addr: str | None = None) -> None:
    """Entry point of the spawned process; `spawned_at` (time.time() in the frontend) dates the start-up log."""
    from pagoda.logging_utils import configure_logging

    # stdout, in the frontend's format (PAGODA_LOG_FORMAT, inherited): text, or one JSON object per record
    configure_logging(log_level, None, process_name="core",
                      text_format="%(levelname)s %(asctime)s.%(msecs)03d [core] %(name)s: %(message)s")
    entered = time.time()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the frontend stops us
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _exit_with_parent(os.path.dirname(error_path))
    try:
        from pagoda.engine.core import EngineCore

        imported = time.time()
        config = engine_args.create_config()
        logger.info("core process start-up: %.2f s from spawn to entry, %.2f s of imports, %.2f s config",
                    entered - (spawned_at or entered), imported - entered, time.time() - imported)
        _share_cpus_with_frontend(config.device.device)
        core = EngineCore(config)
        # This process lives as long as the engine: keep its start-up heap out of every later GC pass.
        freeze_startup_heap()
        gc_debug.attach("engine core")  # VLLM_GC_DEBUG
    except BaseException as exc:  # noqa: BLE001 - every start-up failure must reach the frontend
        _fail(error_path, "engine core failed to start", exc)
        return
    proc = EngineCoreProc(core, input_addr, output_addr, heartbeat_addr)
    try:
        proc.send(READY, {"num_blocks": config.cache.num_blocks, "pid": os.getpid()})
        proc.start_heartbeat()
        proc.run_busy_loop()
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, SystemExit) and not exc.code:
            proc.close()
            return
        _fail(error_path, "engine core died", exc)
    proc.close()


def _share_cpus_with_frontend(device: str) -> None:
    """On CPU, leave one core to the HTTP frontend: torch's OpenMP threads spin, and with as many threads
    as cores they starve the frontend and slow each other down badly (200 streams: ~1 s vs. 6-20 s on 2
    cores). An explicit OMP_NUM_THREADS wins."""
    if device != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cpus - 1)
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info("engine core uses %d CPU threads (one core is left to the HTTP frontend)", threads)


def _fail(error_path: str, what: str, exc: BaseException) -> None:
    logger.error("%s:\n%s", what, "".join(traceback.format_exception(exc)))
    reason = f"{what}: {type(exc).__name__}: {exc}"
    try:
        with open(error_path, "w", encoding="utf-8") as f:
            f.write(reason)
    except OSError:
        pass
    logging.shutdown()
    os._exit(1)


def _exit_with_parent(ipc_dir: str) -> None:
    """Exit as soon as the frontend is gone, removing its socket folder (it could not: it was killed)."""
    import multiprocessing
    import shutil
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        shutil.rmtree(ipc_dir, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class EngineCoreProc:
    def __init__(self, core: Any, input_addr: str, output_addr: str, heartbeat_addr: str | None = None) -> None:
        import zmq

        from pagoda.engine import serial

        self.core = core
        self.serial = serial
        self.ctx = zmq.Context()
        self.input_sock = self.ctx.socket(zmq.PULL)
        self.input_sock.setsockopt(zmq.RCVHWM, 0)
        self.input_sock.connect(input_addr)
        self.output_sock = self.ctx.socket(zmq.PUSH)
        self.output_sock.setsockopt(zmq.SNDHWM, 0)
        self.output_sock.setsockopt(zmq.LINGER, 2000)
        self.output_sock.connect(output_addr)
        self.input_queue: queue.Queue = queue.Queue()
        self.output_queue: queue.Queue = queue.Queue()
        self.unscheduled: dict[str, float] = {}  # request id -> arrival time, until first scheduled
        self.shutdown_requested = False
        self.num_steps = 0  # engine steps run so far (the heartbeat's progress counter)
        self._heartbeat_addr = heartbeat_addr
        self._heartbeat_thread: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
        self._send_lock = threading.Lock()
        threading.Thread(target=self._input_thread, name="core-input", daemon=True).start()
        self._output_thread = threading.Thread(target=self._output_loop, name="core-output", daemon=True)
        self._output_thread.start()

    # ---- I/O threads --------------------------------------------------------------------------
    def _input_thread(self) -> None:
        import zmq

        try:
            while True:
                kind, payload = self.input_sock.recv_multipart(copy=False)
                self.input_queue.put((kind.bytes, self.serial.decode(payload.buffer)))
        except zmq.ContextTerminated:
            self.input_sock.close(linger=0)  # a socket is closed by the thread that uses it
            return
        except BaseException as exc:  # noqa: BLE001 - hand it to the main loop, which dies loudly
            self.input_queue.put((b"!", exc))

    def _output_loop(self) -> None:
        while True:
            item = self.output_queue.get()
            if item is None:
                return
            self.send(OUTPUTS, item)

    def start_heartbeat(self) -> None:
        if self._heartbeat_addr is None:
            return
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="core-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def _heartbeat_loop(self) -> None:
        """Every HEARTBEAT_INTERVAL_S: the step counter and whether there is work, on a socket of its own."""
        import zmq

        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 8)  # a frontend that stopped reading gets at most a few stale beats
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._heartbeat_addr)
        core = self.core
        try:
            while True:
                busy = (bool(core.scheduler.requests) or core.in_flight is not None or core.waiting is not None
                        or bool(core.batch_queue))
                try:
                    sock.send_multipart((HEARTBEAT, self.serial.encode({"steps": self.num_steps, "busy": busy})),
                                        flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                if self._stop_heartbeat.wait(HEARTBEAT_INTERVAL_S):
                    return
        finally:
            sock.close(linger=0)

    def send(self, kind: bytes, payload: Any) -> None:
        data = self.serial.encode(payload)
        with self._send_lock:
            self.output_sock.send_multipart((kind, data), copy=False)

    # ---- the busy loop ------------------------------------------------------------------------
    def run_busy_loop(self) -> None:
        core = self.core
        idle_gc = IdleCollector()  # full GC passes run between bursts of work, never inside one
        with deferred_full_collections():
            while not self.shutdown_requested:
                busy = core.has_unfinished_requests()
                if not busy:
                    idle_gc.collect_if_dirty()
                changed = self._process_input(block=not busy)
                if not core.has_unfinished_requests():
                    lost = core.check_workers()  # a worker that died after its step failed as an ordinary one
                    if core.dead is not None:
                        self.output_queue.put(self._message(lost, time.time()))
                        raise RuntimeError(f"the engine core stops: {core.dead}")
                if core.has_unfinished_requests():
                    started = time.time()
                    outputs = core.step()
                    self.num_steps += 1
                    idle_gc.worked()
                    self.output_queue.put(self._message(outputs, started, core.num_scheduled_tokens))
                    if core.dead is not None:  # a worker process died: this core can never step again
                        raise RuntimeError(f"the engine core stops: {core.dead}")
                elif changed:
                    self.output_queue.put(self._message([], time.time()))

    def _process_input(self, block: bool) -> bool:
        """Apply all queued input (waiting up to a second for some when `block`); True if any."""
        changed = False
        while True:
            try:
                kind, payload = self.input_queue.get(timeout=_IDLE_WAIT_S) if block else self.input_queue.get_nowait()
            except queue.Empty:
                return changed
            block = False
            changed = True
            if kind == ADD:
                self._add(payload)
            elif kind == ABORT:
                self.core.abort_requests(payload)
                for request_id in payload:
                    self.unscheduled.pop(request_id, None)
            elif kind == SHUTDOWN:
                self.shutdown_requested = True
                return changed
            elif kind == b"!":
                raise payload
            else:
                raise ValueError(f"unknown message kind {kind!r} from the frontend")

    def _add(self, request: Any) -> None:
        try:
            self.core.add_request(request)
        except Exception as exc:  # noqa: BLE001 - e.g. a duplicate id: that request fails, the engine lives on
            from pagoda.core.sched_output import EngineCoreOutput

            request_id = getattr(request, "request_id", "?")
            logger.warning("request %s refused by the engine core: %s", request_id, exc,
                           extra={"request_id": request_id})
            reason = f"the engine core refused request {request_id}: {type(exc).__name__}: {exc}"
            self.output_queue.put(self._message([EngineCoreOutput(request_id, [], finish_reason="error", error=reason)],
                                                time.time()))
            return
        self.unscheduled[request.request_id] = request.arrival_time

    def _message(self, outputs: list, step_started: float, num_scheduled_tokens: int = 0) -> EngineCoreOutputs:
        scheduler = self.core.scheduler
        queue_times = {}
        if self.unscheduled:
            for request in getattr(scheduler, "running", ()):
                arrival = self.unscheduled.pop(request.request_id, None)
                if arrival is not None:
                    queue_times[request.request_id] = max(0.0, step_started - arrival)
            for out in outputs:  # finished within its first step
                arrival = self.unscheduled.pop(out.request_id, None)
                if arrival is not None:
                    queue_times[out.request_id] = max(0.0, step_started - arrival)
        return EngineCoreOutputs(outputs=outputs, stats=scheduler.stats(), queue_times=queue_times,
                                 timestamp=time.time(), num_scheduled_tokens=num_scheduled_tokens)

    def close(self) -> None:
        """Flush pending output, then end the context (the input and heartbeat threads close their own sockets)."""
        self._stop_heartbeat.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        self.output_queue.put(None)
        self._output_thread.join(timeout=5)
        self.output_sock.close(linger=1000)
        self.ctx.term()
