"""vLLM's legacy demo server (`vllm.entrypoints.api_server`), which older deployments still start:

    python -m pagoda.entrypoints.api_server --model MODEL --port 8000 [engine flags]

    POST /generate  {"prompt": "...", "stream": false, ...SamplingParams fields}
                    -> {"text": [prompt + completion, ...]}
                    with "stream": true: one JSON object per line, {"text": [...]}\\n, each holding the whole text
                    so far (prompt + what was generated until then), as vLLM's current version streams it
                    (newline-delimited; vLLM's oldest versions ended each chunk with "\\0" instead)
    GET  /health    200 while the engine is healthy, 503 with the reason otherwise (vLLM's demo: always 200)

For anything else use the OpenAI-compatible server (entrypoints/openai/api_server.py), as vLLM advises.

Invariants:
- A body that is not a JSON object, a missing or non-string `prompt`, a non-boolean `stream`, an unknown field
  or a sampling value out of range is a 400 in OpenAI's error shape whose `param` names the field; nothing
  reaches the engine then.
- Every request ends: finished ({"text": ...}), or with OpenAI's error object (a JSON answer with its status,
  or, once a stream has started, a last line {"error": {...}}); a client that disconnects aborts its request.
- SIGTERM/SIGINT drain as in the OpenAI server (--shutdown-timeout, graceful.py): new requests and /health get
  503 meanwhile, and the process exits 0 after stopping the engine core. Logs go to stdout (--log-format).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.responses import StreamingResponse

import pagoda
from pagoda.engine_args import EngineArgs
from pagoda.entrypoints.openai.api_server import bind_socket, raise_open_file_limit
from pagoda.entrypoints.openai.app import add_health_routes, cancel_on_disconnect
from pagoda.entrypoints.openai.cli_args import PagodaArgumentParser
from pagoda.entrypoints.openai.errors import APIError, api_error_handler, error_body, error_response, engine_error
from pagoda.entrypoints.openai.graceful import graceful_server
from pagoda.entrypoints.openai.log_flags import LOG_LEVELS, add_log_flags, logging_choice
from pagoda.entrypoints.openai.middleware import SSEResponse
from pagoda.logging_utils import configure_logging, uvicorn_log_config
from pagoda.sampling_params import SamplingParams

logger = logging.getLogger("pagoda.entrypoints.api_server")

# What a /generate body may carry besides prompt and stream: SamplingParams' own fields (vLLM passes the rest
# of the body to SamplingParams(**fields)), minus the internal ones no JSON value can express.
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams) if f.init) - {
    "output_kind", "logits_processors", "all_stop_token_ids", "bad_words_token_ids"}


class NDJSONResponse(SSEResponse):
    """Newline-delimited JSON that, like SSEResponse, stops and closes its iterator when the client leaves."""

    def __init__(self, content: Any) -> None:
        StreamingResponse.__init__(self, content, media_type="application/x-ndjson",
                                   headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def parse_body(body: Any) -> tuple[str, bool, SamplingParams]:
    """(prompt, stream, sampling params) of a /generate body; APIError 400 naming the field at fault."""
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, got {type(body).__name__}", 400)
    fields = dict(body)
    if "prompt" not in fields:
        raise APIError("prompt is required", 400, "prompt")
    prompt, stream = fields.pop("prompt"), fields.pop("stream", False)
    if not isinstance(prompt, str):
        raise APIError(f"prompt must be a string, got {type(prompt).__name__}", 400, "prompt")
    if not isinstance(stream, bool):
        raise APIError(f"stream must be true or false, got {stream!r}", 400, "stream")
    unknown = sorted(set(fields) - SAMPLING_FIELDS)
    if unknown:
        raise APIError(f"unknown field {unknown[0]!r}: /generate takes prompt, stream and SamplingParams fields "
                       f"({', '.join(sorted(SAMPLING_FIELDS))})", 400, unknown[0])
    try:
        params = SamplingParams(**fields)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        param = next((name for name in sorted(fields, key=len, reverse=True) if message.startswith(name)), None)
        raise APIError(message, 400, param) from None
    return prompt, stream, params


def _texts(output: Any) -> list[str]:
    prompt = output.prompt or ""
    return [prompt + completion.text for completion in output.outputs]


def _error_of(exc: BaseException) -> APIError:
    mapped = engine_error(exc)
    if mapped is not None:
        return mapped
    if isinstance(exc, (ValueError, TypeError)):  # the engine refused the prompt (too long, ...)
        return APIError(str(exc), 400, "prompt" if str(exc).startswith("prompt") else None)
    logger.error("request failed: %s: %s", type(exc).__name__, exc)
    return APIError(f"the request failed: {type(exc).__name__}", 500)


def build_app(engine: Any, root_path: str | None = None) -> FastAPI:
    app = FastAPI(title="Pagoda demo API server (vLLM's api_server)", version=pagoda.__version__,
                  root_path=root_path or "", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(APIError, api_error_handler)

    add_health_routes(app, engine)  # /health as the OpenAI server's (truthful), and /livez

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(f"the request body is not valid JSON: {exc}", 400) from None
        prompt, stream, params = parse_body(body)
        request_id = f"generate-{uuid.uuid4().hex}"
        try:
            outputs = engine.generate(prompt, params, request_id)
            first = await outputs.__anext__()  # admission errors (overloaded, draining, too long) answer as JSON
        except StopAsyncIteration:
            raise APIError("the engine ended the request without output", 500) from None
        except Exception as exc:  # noqa: BLE001 - every failure is answered in OpenAI's error shape
            raise _error_of(exc) from None
        if stream:
            return NDJSONResponse(_stream(first, outputs))
        return await cancel_on_disconnect(request, _final(first, outputs))

    return app


async def _final(first: Any, outputs: AsyncIterator[Any]) -> Response:
    final = first
    try:
        async for final in outputs:
            pass
    except Exception as exc:  # noqa: BLE001
        error = _error_of(exc)
        return error_response(error.message, error.status, error.param, error.headers)
    finally:
        await outputs.aclose()
    return JSONResponse({"text": _texts(final)})


async def _stream(first: Any, outputs: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        yield (json.dumps({"text": _texts(first)}) + "\n").encode()
        async for output in outputs:
            yield (json.dumps({"text": _texts(output)}) + "\n").encode()
    except Exception as exc:  # noqa: BLE001 - the stream has started: its last line carries the error
        error = _error_of(exc)
        yield (json.dumps(error_body(error.message, error.status, error.param)) + "\n").encode()
    finally:
        await outputs.aclose()


async def run_server(args: argparse.Namespace) -> None:
    import uvicorn

    from pagoda.engine.async_llm import AsyncLLM

    if args.enable_ssl_refresh:
        raise ValueError("--enable-ssl-refresh is not supported yet")
    if not args.shutdown_timeout >= 0:
        raise ValueError(f"--shutdown-timeout must be >= 0 seconds, got {args.shutdown_timeout}")
    engine_args = EngineArgs.from_cli_args(args)
    engine_args.check_options()
    raise_open_file_limit()
    sock = bind_socket(args.host or "0.0.0.0", args.port)
    host, port = sock.getsockname()[:2]
    engine = None
    try:
        engine = AsyncLLM(engine_args)
        config = uvicorn.Config(build_app(engine, args.root_path), log_level=args.log_level.lower(),
                                ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                                ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs,
                                timeout_graceful_shutdown=5, log_config=uvicorn_log_config())
        server = graceful_server(config, engine, args.shutdown_timeout)
        sock.listen(2048)  # only once the engine is ready, as the OpenAI server
        logger.info("Pagoda demo API server ready on %s://%s:%d (POST /generate)",
                    "https" if args.ssl_certfile else "http", host, port)
        await server.serve(sockets=[sock])
    finally:
        if engine is not None:
            engine.shutdown()
        sock.close()


def make_parser() -> argparse.ArgumentParser:
    parser = PagodaArgumentParser(prog="python -m pagoda.entrypoints.api_server",
                                  description="vLLM's demo server: POST /generate. Prefer the OpenAI-compatible one.")
    parser.add_argument("--host", default=None, help="Address to listen on (default: every interface).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (0 picks a free one).")
    parser.add_argument("--ssl-keyfile", default=None, help="TLS private key file.")
    parser.add_argument("--ssl-certfile", default=None, help="TLS certificate file.")
    parser.add_argument("--ssl-ca-certs", default=None, help="The CA certificates file.")
    parser.add_argument("--enable-ssl-refresh", action="store_true", default=False,
                        help="vLLM's: reload TLS files when they change (not supported yet).")
    parser.add_argument("--ssl-cert-reqs", type=int, default=0,
                        help="Whether a client certificate is required (see the ssl module).")
    parser.add_argument("--root-path", default=None, help="FastAPI root_path behind a path-based proxy.")
    parser.add_argument("--log-level", type=str.upper, default="DEBUG", choices=LOG_LEVELS,
                        help="uvicorn's log level (vLLM's demo: debug); Pagoda's own messages log at INFO and up.")
    parser.add_argument("--shutdown-timeout", type=float, default=0.0,
                        help="On SIGTERM, seconds in-flight requests may run on before they end with an error.")
    add_log_flags(parser)
    EngineArgs.add_cli_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pagoda.engine.core_client import EngineStartError

    args = make_parser().parse_args(argv)
    try:
        # --log-level is uvicorn's here (vLLM's demo); Pagoda's own level is INFO or --logging-config.log_level
        level, log_format = logging_choice(argparse.Namespace(log_level="INFO", log_format=args.log_format,
                                                              logging_config=args.logging_config))
        configure_logging(level, log_format, process_name="api_server")
        asyncio.run(run_server(args))
    except (ValueError, TypeError, EngineStartError) as exc:
        if not logging.getLogger().handlers:
            configure_logging("INFO", "text", process_name="api_server")
        logger.error("cannot start the server: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
