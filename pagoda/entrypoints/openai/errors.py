"""OpenAI's error object and the mapping from exceptions to HTTP answers.

Every error the server returns has the body `{"error": {"message", "type", "param", "code"}}` with
`code` the HTTP status, `type` vLLM's name for it (BadRequestError, NotFoundError, ...), and
`param` the request field at fault when one is known.

Invariants:
- User errors (bad JSON, wrong types, bad values, unknown model, too long) are 4xx and their message
  names the field; engine trouble is 5xx (503 while overloaded or dead, with Retry-After when
  retrying can help); nothing leaks a traceback to the client.
- An exception of the engine maps to its answer through `ENGINE_ERRORS` alone (one line per class,
  looked up by class name along the MRO, so a subclass answers as its base does until it gets a line
  of its own); `engine_error()` turns it into an APIError wherever the serving code meets it, and the
  catch-all handler applies the same table, so an engine error is never a 500 by accident.
- An error body is always valid UTF-8 JSON: a message holding a lone surrogate (from user input) is
  escaped instead of failing to encode.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # FastAPI is imported where a response is built: cli_args (via limits) reads this module too,
    # and the server's start imports FastAPI only after spawning the engine core (api_server.import_app_modules)
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestEntityTooLarge",
    408: "RequestTimeoutError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}

# Engine exceptions (pagoda.engine.*) -> (HTTP status, whether to send Retry-After). Keyed by class name
# so that a class the engine adds needs one line here and nothing else; subclasses inherit via the MRO.
ENGINE_ERRORS: dict[str, tuple[int, bool]] = {
    "EngineOverloadedError": (503, True),  # too many unfinished requests: retry later
    "EngineRestartingError": (503, True),  # a new engine core is starting
    "EngineDeadError": (503, False),  # the engine core is gone (pagoda.engine.async_llm.EngineDeadError)
    "RequestTimeoutError": (504, False),  # past the server's per-request deadline (--request-timeout)
    "RequestFailedError": (500, False),  # the engine failed this request alone (vLLM: 500)
    "RequestCrashedEngineError": (400, False),  # in flight at two engine crashes: not to be retried as is
    "RequestAbortedError": (503, False),  # ended by the server (e.g. shutting down), not by its client
}
RETRY_AFTER_S = "1"


class APIError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.headers = message, status, param, headers


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    message = _valid_unicode(message)
    param = _valid_unicode(param) if param is not None else None
    return {"error": {"message": message, "type": _TYPES.get(status, HTTPStatus(status).phrase.replace(" ", "")),
                      "param": param, "code": status}}


def error_response(message: str, status: int = 400, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)


def _valid_unicode(text: str) -> str:
    """`text` with any lone surrogate escaped (\\ud800), so the body encodes as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def engine_status(exc: BaseException) -> tuple[int, bool] | None:
    """(status, retry-after) of an engine exception, None for anything else."""
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("pagoda.") and cls.__name__ in ENGINE_ERRORS:
            return ENGINE_ERRORS[cls.__name__]
    return None


def engine_error(exc: BaseException) -> "APIError | None":
    """The APIError an engine exception is answered with (None: not an engine exception)."""
    status = engine_status(exc)
    if status is None:
        return None
    code, retry = status
    message = str(exc) or type(exc).__name__
    if type(exc).__name__ in ("EngineDeadError", "EngineRestartingError") and "engine" not in message:
        message = f"the engine is not running: {message}"
    return APIError(message, code, headers={"Retry-After": RETRY_AFTER_S} if retry else None)


_FIELD_RE = re.compile(r"^([a-z_][a-z0-9_]*)\b")


def param_from_message(message: str, known: set[str] | frozenset[str]) -> str | None:
    """The field a validation message starts with ('temperature must be >= 0, got -1' → 'temperature')."""
    match = _FIELD_RE.match(message)
    if match and match.group(1) in known:
        return match.group(1)
    return None


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # Unions add the member type's name to the location ('prompt.str'); keep the field path.
    fields = [p for p in parts if not p[:1].isupper() and p not in ("str", "int", "float", "list", "dict", "bool")
              and not p.startswith(("list[", "function-"))]
    return ".".join(fields) if fields else None


def _short_json(value: Any, limit: int = 100) -> str:
    """At most `limit` characters of `value` as JSON, without encoding all of a huge input first."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    elif isinstance(value, (list, dict)) and len(value) > limit:
        value = list(value)[:limit]
    return json.dumps(value, default=str)[:limit]


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """pydantic's errors as one 400 naming each field (FastAPI would answer 422 in its own shape)."""
    messages, first_param = [], None
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return error_response(f"invalid JSON in the request body: {err.get('msg', '')}", 400)
        param = _loc_to_param(tuple(err.get("loc", ())))
        first_param = first_param or param
        messages.append(f"{param or 'body'}: {err.get('msg', 'invalid value')}"
                        + (f" (got {_short_json(err['input'])})" if "input" in err and param else ""))
    unique = list(dict.fromkeys(messages))
    return error_response("; ".join(unique) or "invalid request", 400, first_param)


async def api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.message, exc.status, exc.param, exc.headers)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    mapped = engine_error(exc)
    if mapped is not None:  # an engine error the serving code did not convert: still its own status
        logger.warning("engine error while serving %r: %s", request.url.path, mapped.message)
        return error_response(mapped.message, mapped.status, None, mapped.headers)
    logger.exception("unhandled error while serving %r", request.url.path)
    return error_response(f"internal server error: {type(exc).__name__}", 500)
