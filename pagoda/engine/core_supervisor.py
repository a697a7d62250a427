"""CoreSupervisor: the server's engine core that comes back by itself — one EngineCoreClient at a
time, replaced by a fresh one (a new process, new sockets) when it dies.

It offers EngineCoreClient's interface (`add_request`, `abort_requests`, `get_output`, `dead_error`),
so LLMEngine's and AsyncLLM's bookkeeping run on top of it unchanged; AsyncLLM decides what happens to
the requests of a core that died (engine/async_llm.py).

States: STARTING (the first core loads) -> READY <-> RESTARTING (a dead core is replaced) -> FAILED.

Invariants:
- `client` is the only core this supervisor talks to; `generation` counts the cores that became READY
  (0 for the first), so a consumer can tell a new core from the one it saw die. A replaced client is
  shut down (its IPC folder removed) before the next one starts, so at most one core process and one
  socket folder exist at a time.
- `dead_error` is None exactly while the state is READY and the current core is alive; otherwise it
  says why (the death, that a restart is under way, or that the restarts are used up), so /health is
  503 from a death until the new core is READY.
- Restarts are bounded: a death (or a replacement that fails to start) within `restart_window_s` of
  `max_restarts` earlier ones is final (state FAILED; the server stays up and says why). Before
  restart k (1-based, counted within the window) the supervisor waits
  min(backoff_max_s, backoff_initial_s * 2 ** (k - 1)) seconds. Each attempt is logged and counted
  in `num_restarts` (the `pagoda:engine_restarts_total` metric). `max_restarts=0` turns self-healing
  off: the first death is final, as before.
- `add_request` raises EngineDeadError (EngineRestartingError while a restart is under way) unless
  READY; `abort_requests` never raises and reaches a core only when there is a live one.
- `shutdown()` stops any restart under way (a core still starting is cancelled and stopped) and
  leaves no core process behind. A dead client is reaped (process, socket folder) by the restart
  thread, but its sockets are closed by the task that read them (`get_output`) or at shutdown.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from typing import Any, Callable

from pagoda.engine.core_client import EngineCoreClient, EngineDeadError, EngineStartError

logger = logging.getLogger(__name__)


class EngineRestartingError(EngineDeadError):
    """The engine core died and a new one is starting: retry in a few seconds (HTTP 503 + Retry-After)."""


class SupervisorState(enum.IntEnum):
    STARTING = 0
    READY = 1
    RESTARTING = 2
    FAILED = 3


class CoreSupervisor:
    def __init__(self, engine_args: Any, *, on_add: Callable[[Any], None] | None = None,
                 on_abort: Callable[[list[str]], None] | None = None, max_restarts: int = 5,
                 restart_window_s: float = 300.0, backoff_initial_s: float = 1.0, backoff_max_s: float = 30.0,
                 start_timeout_s: float = 600.0, client_kwargs: dict | None = None) -> None:
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an integer >= 0 (0: no restarts), got {max_restarts!r}")
        if not restart_window_s > 0 or not backoff_initial_s >= 0 or not backoff_max_s >= backoff_initial_s:
            raise ValueError("restart_window_s must be > 0 and 0 <= backoff_initial_s <= backoff_max_s, got "
                             f"{restart_window_s}, {backoff_initial_s}, {backoff_max_s}")
        self.engine_args = engine_args
        self.on_add, self.on_abort = on_add, on_abort
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.start_timeout_s = start_timeout_s
        self.client_kwargs = dict(client_kwargs or {})
        self.state = SupervisorState.STARTING
        self.generation = 0
        self.num_restarts = 0
        self.last_death: str | None = None
        self.final_error: str | None = None
        self._deaths: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._restart_thread: threading.Thread | None = None
        self._starting: EngineCoreClient | None = None
        self._retired: list[EngineCoreClient] = []  # dead clients whose sockets may still be open
        self.client = self._new_client()

    @property
    def restarts_enabled(self) -> bool:
        return self.max_restarts > 0

    def _new_client(self) -> EngineCoreClient:
        return EngineCoreClient(self.engine_args, on_add=self.on_add, on_abort=self.on_abort, **self.client_kwargs)

    def wait_ready(self, timeout_s: float | None = None) -> dict:
        """Wait for the first core (EngineStartError if it cannot start: no restart then)."""
        info = self.client.wait_ready(self.start_timeout_s if timeout_s is None else timeout_s)
        self.state = SupervisorState.READY
        self.client.add_dead_callback(self._on_death)  # runs at once if the core died meanwhile
        return info

    # ---- state --------------------------------------------------------------------------------
    @property
    def dead_error(self) -> str | None:
        state = self.state
        if state == SupervisorState.READY:
            client = self.client
            if client.dead_error is not None:
                return client.dead_error
            return None if client.proc.is_alive() else "engine core process is not running"
        if state == SupervisorState.RESTARTING:
            return f"the engine core is restarting (restart {len(self._deaths)} of at most {self.max_restarts} " \
                   f"within {self.restart_window_s:g} s) after: {self.last_death}"
        if state == SupervisorState.FAILED:
            return self.final_error
        return "the engine core is starting"

    def is_ready(self) -> bool:
        return self.dead_error is None

    @property
    def closing(self) -> bool:
        return self._stop.is_set()

    # ---- EngineCore's interface ---------------------------------------------------------------
    def add_request(self, request: Any, notify: bool = True) -> None:
        if self.state == SupervisorState.RESTARTING:
            raise EngineRestartingError(self.dead_error)
        reason = self.dead_error
        if reason is not None:
            raise EngineDeadError(reason)
        self.client.add_request(request, notify=notify)

    def abort_requests(self, request_ids: list[str]) -> list[str]:
        if not request_ids:
            return []
        if self.state == SupervisorState.READY:
            return self.client.abort_requests(request_ids)
        if self.on_abort is not None:  # no live core: only the frontend's books change
            self.on_abort(list(request_ids))
        return list(request_ids)

    async def get_output(self) -> Any:
        """The next message from the current core; EngineDeadError once it is gone (all its messages read).

        The reader of a dead core is the last user of its sockets, so it closes them here."""
        client, generation = self.client, self.generation
        try:
            return await client.get_output()
        except EngineDeadError as exc:
            if client.dead_error is not None or self._stop.is_set():
                client.close_sockets()
            exc.generation = generation  # which core died, whatever has happened since
            raise

    # ---- death and restart --------------------------------------------------------------------
    def _on_death(self) -> None:
        """The current core's monitor thread: decide between a restart and giving up."""
        if self._stop.is_set():
            return
        with self._lock:
            self.last_death = self.client.dead_error or "the engine core died"
            if not self._count_death():
                return
            self.state = SupervisorState.RESTARTING
            self._restart_thread = threading.Thread(target=self._restart_loop, name="engine-core-restart", daemon=True)
            self._restart_thread.start()

    def _count_death(self) -> bool:
        """Record a death (or a failed start); False (and state FAILED) when the restarts are used up."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.restart_window_s:
            self._deaths.popleft()
        if len(self._deaths) <= self.max_restarts:
            return True
        if self.restarts_enabled:
            self.final_error = (f"the engine core died {len(self._deaths)} times within {self.restart_window_s:g} s; "
                                f"not restarted again (max_restarts={self.max_restarts}); last: {self.last_death}")
        else:
            self.final_error = self.last_death
        self.state = SupervisorState.FAILED
        logger.error("%s", self.final_error)
        return False

    def _restart_loop(self) -> None:
        """Replace the dead core, with backoff, until one is READY, the restarts run out, or shutdown."""
        while True:
            attempt = len(self._deaths)
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
            logger.warning("restarting the engine core in %.1f s (restart %d of at most %d within %g s) after: %s",
                           delay, attempt, self.max_restarts, self.restart_window_s, self.last_death)
            if self._stop.wait(delay):
                return
            # The dead one: reap it and remove its socket folder; its sockets are closed by their reader
            # (get_output) or at shutdown, never under a poll in another thread.
            self.client.shutdown(close_sockets=False)
            self._retired.append(self.client)
            if self._start_replacement():
                return
            with self._lock:
                if self._stop.is_set() or not self._count_death():
                    return

    def _start_replacement(self) -> bool:
        started = time.monotonic()
        self.num_restarts += 1
        try:
            client = self._starting = self._new_client()
            if self._stop.is_set():
                client.cancel_start()
            info = client.wait_ready(self.start_timeout_s)
        except (EngineStartError, OSError) as exc:
            self.last_death = f"a restarted engine core failed to start: {exc}"
            logger.error("%s", self.last_death)
            return False
        finally:
            self._starting = None
        with self._lock:
            if self._stop.is_set():
                client.shutdown()
                return True
            self.client = client
            self.generation += 1
            self.state = SupervisorState.READY
        client.add_dead_callback(self._on_death)  # runs at once if it died meanwhile
        logger.info("engine core restarted (pid %d, %d KV blocks, generation %d) in %.1f s",
                    client.proc.pid, info["num_blocks"], self.generation, time.monotonic() - started)
        return True

    # ---- shutdown -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        self._stop.set()
        starting = self._starting
        if starting is not None:
            starting.cancel_start()
        thread = self._restart_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self.client.shutdown()
        for client in self._retired:
            client.close_sockets()
        self._retired.clear()
