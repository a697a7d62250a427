"""ASGI middleware of the server: API-key check, request-body size and time limits, X-Request-Id, and
the SSE response that aborts its request the moment the client goes away.

Invariants:
- With an API key set, every HTTP request except OPTIONS (CORS preflight) and the open paths
  (/health, /livez, /version, /metrics) must carry `Authorization: Bearer <key>`; the comparison is
  constant-time (hmac.compare_digest). Anything else gets 401 before the app sees it.
- No request body larger than the limit is ever held in memory: a too-large Content-Length is
  refused at once with 413, and a chunked body is counted while read and refused when it passes
  the limit.
- A body must keep arriving: by `body_timeout_s` seconds after the headers, plus one second per
  `body_min_rate` bytes received so far (--body-read-timeout, --body-read-min-rate), it is complete,
  else the answer is 408 and the connection is closed. So a client trickling 1 byte/s is cut off
  after about `body_timeout_s`, while a legitimate upload at `body_min_rate` bytes/s or faster is
  never cut, whatever its size (a 32 MB body at the default 64 KiB/s: about 9 minutes allowed).
- An X-Request-Id header that does not match protocol.py's REQUEST_ID_PATTERN (letters, digits,
  `._:-`, at most 128 characters) is a 400 naming the header, before the app sees the request; so
  the header can be echoed and logged as it is.
- 408 and 413 answers close the connection (`Connection: close`): the rest of the body is not read.
- An SSEResponse's body iterator is always closed (`aclose`) when the response ends for any
  reason — finished, client disconnect, or error — so the engine request behind it is aborted.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagoda.entrypoints.openai.errors import error_body
from pagoda.entrypoints.openai.protocol import REQUEST_ID_MAX_LEN, REQUEST_ID_RE

OPEN_PATHS = frozenset({"/health", "/livez", "/version", "/metrics"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _send_error(send: Send, status: int, message: str, headers: list | None = None,
                      param: str | None = None) -> None:
    body = json.dumps(error_body(message, status, param)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class ServerMiddleware:
    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int, request_id_headers: bool,
                 root_path: str | None, body_timeout_s: float | None = None, body_min_rate: int = 0) -> None:
        self.app = app
        self.api_key = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s, self.body_min_rate = body_timeout_s, body_min_rate
        self.request_id_headers = request_id_headers
        self.root_path = (root_path or "").rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["method"] != "OPTIONS" and self._path(scope) not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.api_key):
                await _send_error(send, 401, "invalid or missing API key: send `Authorization: Bearer <key>`",
                                  [(b"www-authenticate", b"Bearer")])
                return
        given_id = headers.get(b"x-request-id")
        if given_id is not None and not _valid_request_id(given_id):
            await _send_error(send, 400, f"the X-Request-Id header must be 1 to {REQUEST_ID_MAX_LEN} characters of "
                              f"letters, digits and '._:-' (got {len(given_id)} bytes)", param="X-Request-Id")
            return
        if self.request_id_headers:
            request_id = given_id
            if not request_id:
                request_id = uuid.uuid4().hex.encode()
                scope["headers"] = list(scope.get("headers") or []) + [(b"x-request-id", request_id)]
            send = self._with_request_id(send, request_id)
        if scope["method"] in _BODY_METHODS:
            receive = await self._limited_body(headers, receive, send)
            if receive is None:
                return
        await self.app(scope, receive, send)

    def _path(self, scope: Scope) -> str:
        path = scope.get("path", "")
        if self.root_path and path.startswith(self.root_path):
            path = path[len(self.root_path):] or "/"
        return path.rstrip("/") or "/"

    @staticmethod
    def _with_request_id(send: Send, request_id: bytes) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers") or []) + [(b"x-request-id", request_id)]
            await send(message)

        return wrapped

    async def _limited_body(self, headers: dict, receive: Receive, send: Send) -> Receive | None:
        """Read the whole body within the limit; a receive() that replays it, or None after a 413."""
        limit = self.max_body_bytes
        length = headers.get(b"content-length")
        too_large = f"request body is larger than the server's limit of {limit} bytes (--max-request-body-bytes)"
        if length is not None:
            try:
                if int(length) > limit:
                    await _send_error(send, 413, too_large, _CLOSE)
                    return None
            except ValueError:
                await _send_error(send, 400, "invalid Content-Length header")
                return None
        chunks, size = [], 0
        started = time.monotonic()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self._body_time_left(started, size))
            except asyncio.TimeoutError:
                await _send_error(send, 408, f"the request body did not arrive in time: {size} bytes in "
                                  f"{time.monotonic() - started:.0f} s (--body-read-timeout {self.body_timeout_s:g} s, "
                                  f"then at least {self.body_min_rate} bytes/s, --body-read-min-rate)", _CLOSE)
                return None
            if message["type"] != "http.request":
                return _replay([message], receive)  # disconnected: let the app see it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, 413, too_large, _CLOSE)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)

    def _body_time_left(self, started: float, received: int) -> float | None:
        if self.body_timeout_s is None:
            return None
        extra = received / self.body_min_rate if self.body_min_rate > 0 else 0.0
        return max(0.0, started + self.body_timeout_s + extra - time.monotonic())


_CLOSE = [(b"connection", b"close")]


def _valid_request_id(value: bytes) -> bool:
    if not 0 < len(value) <= REQUEST_ID_MAX_LEN:
        return False
    try:
        return REQUEST_ID_RE.fullmatch(value.decode("ascii")) is not None
    except UnicodeDecodeError:
        return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class SSEResponse(StreamingResponse):
    """A text/event-stream response that stops (and closes its iterator) when the client disconnects."""

    def __init__(self, content: Any, **kwargs: Any) -> None:
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **(kwargs.pop("headers", None) or {})}
        super().__init__(content, media_type="text/event-stream", headers=headers, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        iterator = self.body_iterator
        stream = asyncio.ensure_future(self.stream_response(send))
        disconnect = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({stream, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, disconnect):
                task.cancel()
            await asyncio.gather(stream, disconnect, return_exceptions=True)
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            exc = stream.exception()
            if not isinstance(exc, OSError):  # a client gone mid-send is not a server error
                raise exc
