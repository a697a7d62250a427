"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) over an AsyncLLM.

    python -m pagoda.entrypoints.openai.api_server --model MODEL [flags]      (or: pagoda serve MODEL)

Start-up order: check every flag, bind the socket (so a taken port fails before the model loads),
start the engine core and wait until it is ready, then listen and serve. Until then the port refuses
connections at once (nothing is queued in a backlog), so a Kubernetes probe fails fast instead of
hanging; vLLM does the same (its socket is bound early and served only once the engine is built), and
KServe's startup and readiness probes count a refused connection as "not ready yet". A failure at any
point exits non-zero with the reason as the last log line.

Logs: every record on stdout (as vLLM), text by default or one JSON object per line with --log-format
json (logging_utils.py); uvicorn's records and the engine core's follow the same format.

`--root-path` is FastAPI's root_path only (as vLLM sets it), not uvicorn's: a request under the prefix
(`/llm/v1/models`) and one a proxy already stripped (`/v1/models`) both reach the route.

Invariants:
- /health (readiness, vLLM's) answers 200 while the engine core is healthy and 503 (with the reason)
  while it is dead, silent, stalled, restarting (the server restarts it itself,
  engine/core_supervisor.py) or while the server drains on SIGTERM (graceful.py: streams then end with
  an error event and [DONE], exit 0).
- /livez (liveness, Pagoda's own) answers 200 while the server can still serve or recover by itself:
  ready, restarting its engine core, or draining; 503 only once the engine is dead for good (restarts
  used up, AsyncLLM.fatal_error), so a liveness probe on it never kills a pod that drains or heals.
- A non-streaming handler is cancelled when its client disconnects, and a streaming one stops at
  once (SSEResponse), so a departed client never keeps an engine request running.
- Every error is OpenAI's error object (errors.py); unknown paths are 404 in the same shape.
- Slow or numerous clients cannot hold the server: request headers have a deadline and open
  connections a cap (http_protocol.py, --header-read-timeout, --limit-concurrency), bodies a deadline
  and a size limit (middleware.py); large tokenizer and template work runs off the event loop
  (offload.py, template_sandbox.py), so /health keeps answering.
- Defaults as vLLM's (kept on purpose, KServe runs `pagoda serve --port 8080`): listen on 0.0.0.0, CORS
  allows every origin, method and header.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, Awaitable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import pagoda
from pagoda.engine.async_llm import AsyncLLM
from pagoda.engine import gc_debug
from pagoda.engine.gc_control import freeze_startup_heap
from pagoda.entrypoints.openai import cli_args, log_flags
from pagoda.entrypoints.openai.errors import (
    APIError,
    api_error_handler,
    error_response,
    unhandled_error_handler,
    validation_error_handler,
)
from pagoda.entrypoints.openai.graceful import graceful_server
from pagoda.entrypoints.openai.http_protocol import PagodaH11Protocol
from pagoda.entrypoints.openai.http_protocol import configure as configure_http
from pagoda.entrypoints.openai.limits import RequestLimits
from pagoda.entrypoints.openai.middleware import ServerMiddleware, SSEResponse
from pagoda.entrypoints.openai.offload import Offloader
from pagoda.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)
from pagoda.entrypoints.openai.serving_chat import OpenAIServingChat
from pagoda.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagoda.entrypoints.openai.serving_embedding import OpenAIServingEmbedding
from pagoda.entrypoints.openai.serving_engine import ServingConfig
from pagoda.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from pagoda.logging_utils import configure_logging, uvicorn_log_config
from pagoda.metrics.loggers import LoggingStatLogger
from pagoda.metrics.prometheus import CONTENT_TYPE, PrometheusStatLogger

logger = logging.getLogger("pagoda.entrypoints.openai.api_server")

LOG_STATS_INTERVAL_S = float(os.environ.get("PAGODA_LOG_STATS_INTERVAL", "10"))


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, handler: Awaitable[Any]) -> Any:
    """Run `handler`; if the client disconnects first, cancel it (which aborts its engine requests)."""
    task = asyncio.ensure_future(handler)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        return Response(status_code=499)  # nobody is listening
    return task.result()


def _respond(result: Any) -> Any:
    if isinstance(result, (dict, list)):
        return JSONResponse(result)
    if hasattr(result, "__aiter__"):
        return SSEResponse(result)
    return result


def serving_config(args: argparse.Namespace, engine: AsyncLLM) -> ServingConfig:
    """The endpoints' settings from the flags, with the automatic limits resolved against the model."""
    model_config = engine.model_config
    limits = RequestLimits.resolve(
        max_n_sequences=args.max_n_sequences, max_prompt_chars=args.max_prompt_chars,
        max_response_logprobs=args.max_response_logprobs, max_model_len=model_config.max_model_len,
        max_logprobs=model_config.max_logprobs, vocab_size=model_config.vocab_size, tokenizer=engine.tokenizer)
    logger.info("request limits: n/best_of <= %d, prompt <= %s characters, response <= %s logprob entries",
                limits.max_n_sequences, limits.max_prompt_chars or "any", limits.max_response_logprobs or "any")
    return ServingConfig(
        served_model_names=cli_args.served_model_names(args), response_role=args.response_role,
        chat_template=args.chat_template, chat_template_content_format=args.chat_template_content_format,
        return_tokens_as_token_ids=args.return_tokens_as_token_ids,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        enable_request_id_headers=args.enable_request_id_headers,
        log_requests=not args.disable_log_requests, max_log_len=args.max_log_len, limits=limits,
        trust_request_chat_template=args.trust_request_chat_template,
        chat_template_render_timeout=args.chat_template_render_timeout,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=(args.tool_call_parser or "") if args.enable_auto_tool_choice else "")


def add_health_routes(app: FastAPI, engine) -> None:
    """/health (readiness: 503 whenever the engine cannot take requests) and /livez (liveness: 503 only once it
    never will again), shared by this server and the demo api_server."""

    @app.get("/health")
    async def health() -> Response:
        reason = engine.dead_error
        if reason is not None:
            return error_response(f"engine core is not running: {reason}", 503)
        return Response(status_code=200)

    @app.get("/livez")
    async def livez() -> Response:
        reason = engine.fatal_error
        if reason is not None:
            return error_response(f"the engine cannot recover by itself: {reason}", 503)
        return Response(status_code=200)


def build_app(args: argparse.Namespace, engine: AsyncLLM, prometheus: PrometheusStatLogger,
              stats_logger: LoggingStatLogger | None) -> FastAPI:
    names = cli_args.served_model_names(args)
    config = serving_config(args, engine)
    offload = Offloader()  # one pool of tokenizer threads for every endpoint
    completion = OpenAIServingCompletion(engine, config, offload)
    chat = OpenAIServingChat(engine, config, offload)
    embedding = OpenAIServingEmbedding(engine, config, offload)
    tokenization = OpenAIServingTokenization(chat)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = None
        if stats_logger is not None:
            async def log_stats() -> None:
                while True:
                    await asyncio.sleep(LOG_STATS_INTERVAL_S)
                    stats_logger.log()

            task = asyncio.create_task(log_stats())
        yield
        if task is not None:
            task.cancel()

    docs = not args.disable_fastapi_docs
    app = FastAPI(title="Pagoda OpenAI-compatible API", version=pagoda.__version__, lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None, root_path=args.root_path or "")
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, lambda request, exc: error_response(
        str(exc.detail), exc.status_code))
    app.add_exception_handler(Exception, unhandled_error_handler)
    app.state.engine = engine

    add_health_routes(app, engine)

    @app.get("/version")
    async def version() -> dict:
        return {"version": pagoda.__version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(prometheus.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        model_config = engine.model_config
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": started, "owned_by": "pagoda",
             "root": model_config.model, "parent": None, "max_model_len": model_config.max_model_len,
             "permission": []} for name in names]}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw_request: Request) -> Any:
        return _respond(await cancel_on_disconnect(raw_request, completion.create_completion(request, raw_request)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, raw_request: Request) -> Any:
        return _respond(await cancel_on_disconnect(raw_request, chat.create_chat_completion(request, raw_request)))

    @app.post("/v1/embeddings")
    async def embeddings(request: EmbeddingRequest, raw_request: Request) -> Any:
        return _respond(await cancel_on_disconnect(raw_request, embedding.create_embedding(request, raw_request)))

    @app.post("/tokenize")
    async def tokenize(request: TokenizeRequest) -> Any:
        return await tokenization.tokenize(request)

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest) -> Any:
        return await tokenization.detokenize(request)

    app.add_middleware(ServerMiddleware, api_key=args.api_key, max_body_bytes=args.max_request_body_bytes,
                       request_id_headers=args.enable_request_id_headers, root_path=args.root_path,
                       body_timeout_s=args.body_read_timeout or None, body_min_rate=args.body_read_min_rate)
    app.add_middleware(CORSMiddleware, allow_origins=args.allowed_origins, allow_credentials=args.allow_credentials,
                       allow_methods=args.allowed_methods, allow_headers=args.allowed_headers)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # accepted sockets inherit the proto
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} (--host/--port): {exc.strerror}") from None
    sock.setblocking(False)
    return sock  # bound, not listening: connections are refused at once until `sock.listen()`


def _keep_alive_s() -> int:
    """Seconds an idle keep-alive connection stays open: VLLM_HTTP_TIMEOUT_KEEP_ALIVE, as vLLM reads it (5)."""
    value = os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE") or "5"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"VLLM_HTTP_TIMEOUT_KEEP_ALIVE must be an integer (seconds), got {value!r}") from None


def raise_open_file_limit() -> None:
    """Every stream holds a socket: lift the soft limit on open files to the hard one (as vLLM does)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d (%s); concurrent streams are capped by it",
                           soft, exc)


async def run_server(args: argparse.Namespace) -> None:
    import prometheus_client
    import uvicorn

    cli_args.validate_args(args)
    gc_debug.attach("API server")  # VLLM_GC_DEBUG: a value it does not understand stops the start here
    raise_open_file_limit()
    engine_args = cli_args.engine_args_from(args)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    logger.info("Pagoda %s: will listen on http://%s:%d once the engine is ready", pagoda.__version__, host, port)
    prometheus_client.disable_created_metrics()
    names = cli_args.served_model_names(args)
    engine = None
    try:
        stats_logger = None if args.disable_log_stats else LoggingStatLogger()
        engine = AsyncLLM(engine_args, start_timeout_s=args.engine_start_timeout,
                          max_pending_requests=args.max_pending_requests, request_timeout_s=args.request_timeout,
                          heartbeat_timeout_s=args.engine_heartbeat_timeout,
                          engine_stall_timeout_s=args.engine_stall_timeout or None,
                          max_engine_restarts=args.max_engine_restarts,
                          engine_restart_window_s=args.engine_restart_window,
                          engine_restart_backoff_s=args.engine_restart_backoff,
                          engine_restart_backoff_max_s=args.engine_restart_backoff_max)
        prometheus = PrometheusStatLogger(names[0], engine.model_config.max_model_len, cache_config=engine.config.cache)
        engine.stat_loggers.append(prometheus)
        if stats_logger is not None:
            engine.stat_loggers.append(stats_logger)
        app = build_app(args, engine, prometheus, stats_logger)
        config = uvicorn.Config(
            app, log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
            ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
            ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs, timeout_graceful_shutdown=5,
            lifespan="on", http=PagodaH11Protocol, timeout_keep_alive=_keep_alive_s(),
            log_config=uvicorn_log_config())  # stdout, in --log-format (configure_logging exported it)
        configure_http(config, header_timeout_s=args.header_read_timeout or None,
                       limit_concurrency=args.limit_concurrency)
        server = graceful_server(config, engine, args.shutdown_timeout)
        scheme = "https" if args.ssl_certfile else "http"
        frozen, pass_s = freeze_startup_heap()  # as vLLM's API server: no full GC pass over the start-up heap later
        logger.info("API server: froze %d start-up objects out of garbage-collector passes (a full pass over them "
                    "took %.0f ms)", frozen, pass_s * 1e3)
        sock.listen(2048)  # only now: before the engine is ready a probe gets "connection refused", not a hang
        logger.info("Pagoda API server ready on %s://%s:%d (model %s)", scheme, host, port, ", ".join(names))
        await server.serve(sockets=[sock])
    finally:
        if engine is not None:
            engine.shutdown()
        sock.close()


def setup_logging(args: argparse.Namespace) -> None:
    """stdout logging in the format and level the flags ask for; a bad choice is logged (as text) and raised."""
    try:
        level, log_format = log_flags.logging_choice(args)
        configure_logging(level, log_format, process_name="api_server")
    except ValueError:
        configure_logging(getattr(args, "log_level", None) or "INFO", "text", process_name="api_server")
        raise


def run(args: argparse.Namespace) -> int:
    """Run the server until it is stopped; 1 with the reason logged when it cannot start."""
    from pagoda.engine.core_client import EngineStartError

    try:
        setup_logging(args)
        asyncio.run(run_server(args))
    except (ValueError, TypeError, EngineStartError) as exc:
        logger.error("cannot start the server: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = cli_args.PagodaArgumentParser(
        prog="python -m pagoda.entrypoints.openai.api_server",
        description="Pagoda's OpenAI-compatible server.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="Log level of Pagoda's own messages.")
    return cli_args.make_arg_parser(parser)


def main(argv: list[str] | None = None) -> int:
    return run(make_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
