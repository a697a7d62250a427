"""uvicorn's h11 protocol with Nagle's algorithm off, a request-header deadline and a cap on open connections.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no deadline for the
request line and headers: a client that connects and sends nothing, or one header byte per second,
holds its connection (a socket, a file descriptor, buffers) for ever. This protocol class adds:

- TCP_NODELAY on every connection. asyncio sets it only on sockets whose `proto` is IPPROTO_TCP, and a
  connection accepted from a listening socket made as `socket.socket(family, SOCK_STREAM)` has proto 0
  (uvloop, which vLLM runs on, sets it regardless). Without it a response written in two pieces (the
  headers, then the body or the next SSE event) held its second piece until the client acknowledged the
  first, and clients delay that ACK by up to 40 ms: on a kept-alive connection every JSON response took
  44 ms instead of 1-2 ms (2-core CPU machine, session 20), and streamed tokens waited the same way.

- A header deadline: from the moment a connection opens, or the first byte of a further request on
  a kept-alive connection arrives, the request's headers must be complete within `header_timeout_s`
  (--header-read-timeout), else the connection is closed. Bodies have their own deadline
  (middleware.py), which starts when the headers are complete.
- A connection cap: while more than `limit_concurrency` connections are open (--limit-concurrency),
  a new connection's request is answered 503 + Retry-After with OpenAI's error JSON and the
  connection is closed, except /health, /version and /metrics, which are still served (a flood must
  not make a liveness probe fail). uvicorn's own `limit_concurrency` is left unset: it answers in
  plain text.

Invariants:
- The header timer runs only while the connection waits for a request's headers (h11's client state
  IDLE with bytes of a request pending, or a fresh connection), and never while uvicorn's keep-alive
  timer runs; it is cancelled when the headers are complete and when the connection closes.
- Both settings travel in `uvicorn.Config` as attributes set by `configure()`; the class is passed
  as `uvicorn.Config(http=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pagoda.entrypoints.openai.errors import RETRY_AFTER_S, error_body

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/version", "/metrics"})


def configure(config: Any, header_timeout_s: float | None, limit_concurrency: int | None) -> None:
    """Put this protocol's settings on a uvicorn.Config (which has no fields for them)."""
    config.pagoda_header_timeout_s = header_timeout_s
    config.pagoda_limit_concurrency = limit_concurrency


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP transport's socket (see the module docstring); others are left alone."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        with contextlib.suppress(OSError):  # a client that is already gone: its connection closes on its own
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PagodaH11Protocol(H11Protocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s = getattr(config, "pagoda_header_timeout_s", None)
        self.connection_limit = getattr(config, "pagoda_limit_concurrency", None)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        if self.connection_limit is not None and len(self.connections) > self.connection_limit:
            self.app = _over_limit(self.app, self.connection_limit)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()  # headers complete (or the connection errored)
        elif self._header_timer is None and self.timeout_keep_alive_task is None:
            self._arm_header_timer()  # the first bytes of a further request on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self.header_timeout_s is not None and self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = "%s:%d" % self.client if self.client else "a client"
            logger.info("closing the connection from %s: no complete request headers within %g s "
                        "(--header-read-timeout)", client, self.header_timeout_s)
            self.transport.close()


def _over_limit(app: Any, limit: int) -> Any:
    """`app` for the open paths; 503 + Retry-After (and close) for everything else."""
    body = json.dumps(error_body(f"the server has more than {limit} open connections (--limit-concurrency); "
                                 "retry later", 503)).encode()

    async def over_limit(scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or any(path.endswith(p) for p in OPEN_PATHS):  # also under --root-path
            await app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", RETRY_AFTER_S.encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return over_limit
