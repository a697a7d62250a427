"""SIGTERM / SIGINT the way Kubernetes sends them: drain, end what is left with an error, exit 0.

On the first signal:
1. The engine stops admitting (`AsyncLLM.begin_drain`): new requests get 503 "the server is shutting
   down" and /health answers 503, so a load balancer stops routing here. The port stays open, so a
   client that still arrives gets that clear answer rather than a refused connection.
2. Requests in flight run on for up to `--shutdown-timeout` seconds (vLLM's flag; its default 0
   means no wait), or until none is left.
3. Whatever is still running is ended by the engine (`AsyncLLM.fail_all_requests`): a stream gets an
   error event and `data: [DONE]`, a non-streamed request OpenAI's error JSON with status 503. No
   response is cut off in the middle.
4. uvicorn then stops: it closes the listener and idle keep-alive connections and gives open
   responses a few seconds to finish sending.
A second signal during the wait skips the rest of it (step 3 at once).

Invariants:
- Signal handlers only schedule work on the event loop (`call_soon_threadsafe`); the drain itself
  runs as one asyncio task, started once.
- The process exits 0 after a signal; the engine core is shut down by `run_server`'s `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from typing import Any

logger = logging.getLogger("pagoda.entrypoints.openai.api_server")

SHUTDOWN_REASON = "the server is shutting down"
_POLL_S = 0.05
_FLUSH_S = 0.2  # after ending the requests, time for their handlers to send the final bytes


def graceful_server(config: Any, engine: Any, shutdown_timeout_s: float) -> Any:
    """A uvicorn.Server over `config` that drains `engine` on SIGTERM/SIGINT (see the module docstring)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def __init__(self) -> None:
            super().__init__(config)
            self._loop: asyncio.AbstractEventLoop | None = None
            self._drain_task: asyncio.Task | None = None
            self._skip_wait = asyncio.Event()

        async def serve(self, sockets: list | None = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets=sockets)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's own version re-raises the signal after a graceful stop, which would kill this
            # process before the engine core is shut down; we drain, stop and exit 0 instead.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def _on_signal(self, sig: int, frame: Any) -> None:
            if self._loop is None:
                self.should_exit = True
                return
            self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

        def _start_drain(self, name: str) -> None:
            if self._drain_task is None:
                self._drain_task = asyncio.ensure_future(self._drain(name))
            else:
                logger.warning("%s again: ending the open requests now", name)
                self._skip_wait.set()

        async def _drain(self, name: str) -> None:
            engine.begin_drain(SHUTDOWN_REASON)
            open_requests = engine.num_unfinished_requests
            logger.info("%s: shutting down; no new requests are admitted; %d in flight, waiting up to %.0f s "
                        "(--shutdown-timeout)", name, open_requests, shutdown_timeout_s)
            started = time.monotonic()
            while (engine.num_unfinished_requests and not self._skip_wait.is_set()
                   and time.monotonic() - started < shutdown_timeout_s):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._skip_wait.wait(), _POLL_S)
            left = engine.fail_all_requests(SHUTDOWN_REASON)
            if left:
                logger.warning("ended %d request(s) still in flight with an error (%s)", left, SHUTDOWN_REASON)
                await asyncio.sleep(_FLUSH_S)
            self.should_exit = True

    return GracefulServer()
