"""OpenAI's error object and the mapping from exceptions to HTTP answers.

Every error the server returns has the body `{"error": {"message", "type", "param", "code"}}` with
`code` the HTTP status, `type` vLLM's name for it (BadRequestError, NotFoundError, ...), and
`param` the request field at fault when one is known.

Invariants:
- User errors (bad JSON, wrong types, bad values, unknown model, too long) are 4xx and their message
  names the field; engine trouble is 5xx (503 while overloaded or dead, with Retry-After when
  retrying can help); nothing leaks a traceback to the client.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestEntityTooLarge",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.headers = message, status, param, headers


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, HTTPStatus(status).phrase.replace(" ", "")),
                      "param": param, "code": status}}


def error_response(message: str, status: int = 400, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)


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


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """pydantic's errors as one 400 naming each field (FastAPI would answer 422 in its own shape)."""
    messages, first_param = [], None
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return error_response(f"invalid JSON in the request body: {err.get('msg', '')}", 400)
        param = _loc_to_param(tuple(err.get("loc", ())))
        first_param = first_param or param
        messages.append(f"{param or 'body'}: {err.get('msg', 'invalid value')}"
                        + (f" (got {json.dumps(err['input'], default=str)[:100]})" if "input" in err
                           and param else ""))
    unique = list(dict.fromkeys(messages))
    return error_response("; ".join(unique) or "invalid request", 400, first_param)


async def api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.message, exc.status, exc.param, exc.headers)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error while serving %s", request.url.path)
    return error_response(f"internal server error: {type(exc).__name__}", 500)
