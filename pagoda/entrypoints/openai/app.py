"""The OpenAI-compatible server's FastAPI app: its routes over an AsyncLLM, and the settings they read from the flags.

api_server.py starts the server; this module holds what it serves. It is kept apart because importing it (FastAPI,
pydantic's request models, the endpoints) costs ~0.7 s, which api_server.py spends after spawning the engine core
process, while that process starts, instead of before (api_server.import_app_modules).

Invariants: building the app starts nothing (no task, no thread) until uvicorn runs its lifespan; every route
answers in OpenAI's error shape (errors.py) and a disconnected client cancels its handler (cancel_on_disconnect).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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
from pagoda.entrypoints.openai import cli_args
from pagoda.entrypoints.openai.errors import (
    APIError,
    api_error_handler,
    error_response,
    unhandled_error_handler,
    validation_error_handler,
)
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
from pagoda.metrics.loggers import LoggingStatLogger
from pagoda.metrics.prometheus import CONTENT_TYPE, PrometheusStatLogger

logger = logging.getLogger("pagoda.entrypoints.openai.api_server")  # the server's one logger name, as before

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
