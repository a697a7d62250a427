"""The frontend's handle on the engine-core process: start it, talk to it, notice when it dies.

`EngineCoreClient` offers EngineCore's `add_request` / `abort_requests`, so the frontend's
LLMEngine bookkeeping runs unchanged on top of it, plus `get_output()` to await the next
EngineCoreOutputs message.

Invariants:
- The process is started (`spawn` context) by the constructor; `wait_ready()` returns only once the
  core has loaded the model and said READY; if the core dies first, it raises EngineStartError
  carrying the core's own error text (or its exit code).
- Once the process is gone (crash, kill, OOM), `dead_error` is set within about a second by a
  monitor thread waiting on the process sentinel, and `get_output()` raises EngineDeadError no later
  than one poll interval after it has returned every message the core sent before dying.
- Once READY, a watchdog thread reads the core's heartbeats (core_proc.py) and declares the core
  unhealthy when (a) no heartbeat came for `heartbeat_timeout_s` (stopped, hung, deadlocked process)
  or (b) the core says it has work but its step counter has not moved for `stall_timeout_s` (stuck
  inside a step; 0 or None turns this check off). Declaring it unhealthy sets `dead_error` to the reason
  and kills the process (SIGKILL), so from then on it is handled exactly like a crash, whose death
  callbacks run once the process is gone. Only the watchdog thread uses the heartbeat socket.
- The sockets live in a private temporary folder (`pagoda-ipc-<frontend pid>-*`) that `shutdown()`
  removes; if the frontend is killed outright, its core removes it as it exits, and the next server
  to start removes any folder whose frontend pid is dead. `shutdown()` is idempotent and always
  leaves no engine-core process behind (SHUTDOWN, then terminate, then kill). A ZMQ socket is only
  ever closed by the thread that polls it, or once nothing polls it (`close_sockets()`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from multiprocessing.connection import wait
from typing import Any, Callable

import zmq
import zmq.asyncio

from pagoda.engine import serial
from pagoda.engine.core_proc import (
    ABORT,
    ADD,
    HEARTBEAT,
    HEARTBEAT_INTERVAL_S,
    OUTPUTS,
    READY,
    SHUTDOWN,
    EngineCoreOutputs,
    run_engine_core,
)

logger = logging.getLogger(__name__)

_POLL_MS = 500
_WATCHDOG_POLL_MS = 250
DEFAULT_HEARTBEAT_TIMEOUT_S = 5.0
# vLLM's VLLM_ENGINE_ITERATION_TIMEOUT_S is 60 s too. Start-up work (model load, Triton compiles, CUDA
# graph capture) happens before READY, so it never counts; a single step longer than this would be
# a prefill of max_num_batched_tokens on a very slow (CPU) device.
DEFAULT_STALL_TIMEOUT_S = 60.0
IPC_PREFIX = "pagoda-ipc-"  # + the frontend's pid + "-" + a random suffix, in the temp folder


def remove_stale_ipc_dirs(root: str | None = None) -> list[str]:
    """Remove socket folders left by frontends that are gone (e.g. killed with SIGKILL before their core
    could clean up); a folder whose pid is alive, or whose name carries no pid, is left alone."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        pid_text = name[len(IPC_PREFIX):].split("-", 1)[0] if name.startswith(IPC_PREFIX) else ""
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    if removed:
        logger.info("removed %d stale engine socket folder(s) of dead servers: %s", len(removed), ", ".join(removed))
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class EngineDeadError(RuntimeError):
    """The engine-core process is gone; every open request fails with this."""


class EngineStartError(RuntimeError):
    """The engine-core process could not load the model."""


class EngineCoreClient:
    def __init__(self, engine_args: Any, on_add: Callable[[Any], None] | None = None,
                 on_abort: Callable[[list[str]], None] | None = None, *,
                 heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
                 stall_timeout_s: float | None = DEFAULT_STALL_TIMEOUT_S) -> None:
        if not heartbeat_timeout_s > 2 * HEARTBEAT_INTERVAL_S:
            raise ValueError(f"heartbeat_timeout_s must be more than twice the core's heartbeat interval "
                             f"({HEARTBEAT_INTERVAL_S:g} s), got {heartbeat_timeout_s}")
        if stall_timeout_s is not None and not stall_timeout_s >= 0:
            raise ValueError(f"stall_timeout_s must be > 0, or 0 / None (off), got {stall_timeout_s}")
        self.on_add, self.on_abort = on_add, on_abort
        self.heartbeat_timeout_s, self.stall_timeout_s = heartbeat_timeout_s, stall_timeout_s or None
        self.dead_error: str | None = None
        self.unhealthy_reason: str | None = None  # set by the watchdog before it kills the core
        self.last_heartbeat: dict | None = None
        self._cancel_start = False
        self._closing = False
        self._dead_callbacks: list[Callable[[], None]] = []
        self._callback_lock = threading.Lock()
        self._died = False  # the monitor has seen an unexpected death and run the callbacks
        self._sockets_closed = False
        remove_stale_ipc_dirs()
        self._ipc_dir = tempfile.mkdtemp(prefix=f"{IPC_PREFIX}{os.getpid()}-")
        self._error_path = os.path.join(self._ipc_dir, "core_error.txt")
        self.ctx = zmq.Context()
        self.input_sock = self.ctx.socket(zmq.PUSH)
        self.input_sock.setsockopt(zmq.SNDHWM, 0)
        self.input_sock.setsockopt(zmq.LINGER, 0)
        self.input_sock.bind(f"ipc://{self._ipc_dir}/input")
        self.output_sock = self.ctx.socket(zmq.PULL)
        self.output_sock.setsockopt(zmq.RCVHWM, 0)
        self.output_sock.bind(f"ipc://{self._ipc_dir}/output")
        self.heartbeat_sock = self.ctx.socket(zmq.PULL)
        self.heartbeat_sock.setsockopt(zmq.LINGER, 0)
        self.heartbeat_sock.bind(f"ipc://{self._ipc_dir}/heartbeat")
        self._watchdog: threading.Thread | None = None
        self._async_output: zmq.asyncio.Socket | None = None
        spawn = multiprocessing.get_context("spawn")
        self.proc = spawn.Process(
            target=run_engine_core,
            args=(engine_args, f"ipc://{self._ipc_dir}/input", f"ipc://{self._ipc_dir}/output",
                  self._error_path, logging.getLogger().getEffectiveLevel(), time.time(),
                  f"ipc://{self._ipc_dir}/heartbeat"),
            name="PagodaEngineCore",
        )
        self.proc.start()
        threading.Thread(target=self._monitor, name="engine-core-monitor", daemon=True).start()
        self.ready_info: dict | None = None

    # ---- start-up and death -------------------------------------------------------------------
    def wait_ready(self, timeout_s: float = 600.0) -> dict:
        """Block until the core has loaded the model; on failure shut it down and raise EngineStartError."""
        try:
            self.ready_info = self._wait_ready(timeout_s)
        except BaseException:
            self.shutdown()
            raise
        logger.info("engine core ready (pid %d, %d KV blocks)", self.proc.pid, self.ready_info["num_blocks"])
        self._watchdog = threading.Thread(target=self._watch_heartbeats, name="engine-core-watchdog", daemon=True)
        self._watchdog.start()
        return self.ready_info

    def cancel_start(self) -> None:
        """Make a `wait_ready()` running in another thread give up within ~0.2 s (it then shuts down)."""
        self._cancel_start = True

    def _wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.output_sock.poll(200):
                kind, payload = self.output_sock.recv_multipart()
                if kind != READY:
                    raise EngineStartError(f"engine core sent {kind!r} before READY")
                return serial.decode(payload)
            if self.dead_error is not None or not self.proc.is_alive():
                self.proc.join(timeout=5)
                raise EngineStartError(self._death_reason())
            if self._cancel_start:
                raise EngineStartError("the engine core's start was cancelled (the engine is shutting down)")
        raise EngineStartError(f"engine core did not become ready within {timeout_s:.0f} s")

    def _watch_heartbeats(self) -> None:
        """The watchdog: judge the core's heartbeats; declare it unhealthy (and kill it) when they say so."""
        sock = self.heartbeat_sock
        last_beat = progress_at = time.monotonic()
        steps, busy = -1, False
        try:
            while not self._closing and self.dead_error is None:
                if sock.poll(_WATCHDOG_POLL_MS):
                    while True:  # everything queued first, so a frontend that was itself paused judges fairly
                        try:
                            kind, payload = sock.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if kind != HEARTBEAT:
                            continue
                        beat = self.last_heartbeat = serial.decode(payload)
                        last_beat = time.monotonic()
                        if beat["steps"] != steps or not beat["busy"]:
                            progress_at = last_beat
                        steps, busy = beat["steps"], beat["busy"]
                reason = self._judge(time.monotonic(), last_beat, progress_at, busy)
                if reason is not None:
                    self._declare_unhealthy(reason)
                    return
        except zmq.ZMQError:
            if not self._closing:
                logger.exception("the engine-core watchdog stopped")
        finally:
            sock.close(linger=0)

    def _judge(self, now: float, last_beat: float, progress_at: float, busy: bool) -> str | None:
        silent = now - last_beat
        if silent > self.heartbeat_timeout_s:
            return (f"engine core (pid {self.proc.pid}) sent no heartbeat for {silent:.1f} s (the process is "
                    f"stopped or hung; heartbeat timeout {self.heartbeat_timeout_s:g} s)")
        stalled = now - progress_at
        if busy and self.stall_timeout_s is not None and stalled > self.stall_timeout_s:
            return (f"engine core (pid {self.proc.pid}) has work but ran no step for {stalled:.1f} s (stuck in a "
                    f"step; stall timeout {self.stall_timeout_s:g} s)")
        return None

    def _declare_unhealthy(self, reason: str) -> None:
        if self._closing or self.dead_error is not None:
            return
        self.unhealthy_reason = self.dead_error = f"engine core declared unhealthy: {reason}"
        logger.error("%s; killing it", self.dead_error)
        try:
            self.proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process; the monitor does the rest
        except (OSError, ValueError):
            pass

    def _monitor(self) -> None:
        wait([self.proc.sentinel])
        if self._closing:
            self.dead_error = "the engine was shut down"
            return
        self.proc.join(timeout=1)
        self.dead_error = self.unhealthy_reason or self._death_reason()
        logger.error("engine core process died: %s", self.dead_error)
        with self._callback_lock:
            self._died = True
            callbacks = list(self._dead_callbacks)
        for callback in callbacks:
            self._run_dead_callback(callback)

    @staticmethod
    def _run_dead_callback(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # noqa: BLE001 - a closed event loop must not hide the death
            logger.exception("engine-death callback failed")

    def _death_reason(self) -> str:
        try:
            with open(self._error_path, encoding="utf-8") as f:
                text = f.read().strip()
            if text:
                return text
        except OSError:
            pass
        code = self.proc.exitcode
        if code is not None and code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"engine core process (pid {self.proc.pid}) was killed by signal {name}"
        return f"engine core process (pid {self.proc.pid}) exited with code {code}"

    def add_dead_callback(self, callback: Callable[[], None]) -> None:
        """`callback()` runs (in the monitor thread) when the core dies unexpectedly — at once, in this
        thread, if it has died already, so no death goes unnoticed."""
        with self._callback_lock:
            self._dead_callbacks.append(callback)
            died = self._died
        if died:
            self._run_dead_callback(callback)

    def is_alive(self) -> bool:
        return self.dead_error is None and self.proc.is_alive()

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(self.dead_error)

    # ---- EngineCore's interface ---------------------------------------------------------------
    def add_request(self, request: Any, notify: bool = True) -> None:
        """Send one request; `notify=False` skips `on_add` (a request resent to a restarted core)."""
        self._check_alive()
        data = serial.encode(request)  # before on_add: a request that cannot be encoded registers nothing
        if notify and self.on_add is not None:
            self.on_add(request)
        self.input_sock.send_multipart((ADD, data), copy=False)

    def abort_requests(self, request_ids: list[str]) -> list[str]:
        if not request_ids:
            return []
        if self.on_abort is not None:
            self.on_abort(request_ids)
        if self.dead_error is None:
            self.input_sock.send_multipart((ABORT, serial.encode(list(request_ids))), copy=False)
        return list(request_ids)

    async def get_output(self) -> EngineCoreOutputs:
        """The next message from the core; EngineDeadError once it is gone and nothing is left."""
        if self._async_output is None:
            self._async_output = zmq.asyncio.Socket.from_socket(self.output_sock)
        sock = self._async_output
        while True:
            if await sock.poll(_POLL_MS):
                kind, payload = await sock.recv_multipart(copy=False)
                if kind.bytes != OUTPUTS:
                    raise EngineDeadError(f"unexpected message {kind.bytes!r} from the engine core")
                return serial.decode(payload.buffer)
            if self.dead_error is not None:
                raise EngineDeadError(self.dead_error)
            if self._closing:
                raise EngineDeadError("the engine was shut down")

    # ---- shutdown -----------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 5.0, close_sockets: bool = True) -> None:
        """Stop the core (SHUTDOWN, then terminate, then kill) and remove the socket folder; idempotent.

        `close_sockets=False` leaves the ZMQ sockets open for the thread that still reads them to close
        with `close_sockets()` (a socket must not be closed under another thread's poll)."""
        if not self._closing:
            self._closing = True
            if self._watchdog is not None and self._watchdog is not threading.current_thread():
                self._watchdog.join(timeout=2)  # it closes the heartbeat socket itself
            proc = self.proc
            if proc.is_alive() and self.ready_info is not None:  # a core still starting reads no messages
                try:
                    self.input_sock.send_multipart((SHUTDOWN, serial.encode(None)), flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
                proc.join(timeout_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout_s)
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            logger.info("engine core stopped (exit code %s)", proc.exitcode)
        if close_sockets:
            self.close_sockets()

    def close_sockets(self) -> None:
        """End the ZMQ context (idempotent); only once nothing polls the sockets any more."""
        with self._callback_lock:
            if self._sockets_closed:
                return
            self._sockets_closed = True
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=2)
        self.ctx.destroy(linger=0)
