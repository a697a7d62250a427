"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) over an AsyncLLM.

    python -m pagoda.entrypoints.openai.api_server --model MODEL [flags]      (or: pagoda serve MODEL)

Start-up order: check every flag, bind the socket (so a taken port fails before the model loads),
spawn the engine core, build the frontend (tokenizer) and import the HTTP stack (app.py: FastAPI and the
endpoints, ~0.7 s) while the core starts, wait until the core is ready, then listen and serve. Until then the port refuses
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

import pagoda
from pagoda.engine import gc_debug
from pagoda.engine.async_llm import AsyncLLM
from pagoda.engine.gc_control import freeze_startup_heap
from pagoda.entrypoints.openai import cli_args, log_flags
from pagoda.logging_utils import configure_logging, uvicorn_log_config

logger = logging.getLogger("pagoda.entrypoints.openai.api_server")


def import_app_modules() -> None:
    """Import what serving needs beyond the engine (uvicorn, FastAPI, pydantic's request models, the endpoints:
    ~0.7 s on the CPU machine), then freeze the heap so far out of the garbage collector. run_server does this
    once the engine core process is spawned and the frontend built, while the core starts (the server's critical
    path): the import no longer delays the spawn, and the full pass over the frontend's heap (~150 ms) no longer
    runs between the core's readiness and listening, where only the app's objects are left to walk."""
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401

    import pagoda.entrypoints.openai.app  # noqa: F401
    import pagoda.entrypoints.openai.graceful  # noqa: F401
    import pagoda.entrypoints.openai.http_protocol  # noqa: F401

    frozen, pass_s = freeze_startup_heap()
    logger.info("API server: froze %d objects of its start-up (a full pass over them took %.0f ms) while the engine "
                "core starts", frozen, pass_s * 1e3)


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
    cli_args.validate_args(args)
    gc_debug.attach("API server")  # VLLM_GC_DEBUG: a value it does not understand stops the start here
    raise_open_file_limit()
    engine_args = cli_args.engine_args_from(args)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    logger.info("Pagoda %s: will listen on http://%s:%d once the engine is ready", pagoda.__version__, host, port)
    names = cli_args.served_model_names(args)
    engine = None
    try:
        engine = AsyncLLM(engine_args, start_timeout_s=args.engine_start_timeout,
                          max_pending_requests=args.max_pending_requests, request_timeout_s=args.request_timeout,
                          heartbeat_timeout_s=args.engine_heartbeat_timeout,
                          engine_stall_timeout_s=args.engine_stall_timeout or None,
                          max_engine_restarts=args.max_engine_restarts,
                          engine_restart_window_s=args.engine_restart_window,
                          engine_restart_backoff_s=args.engine_restart_backoff,
                          engine_restart_backoff_max_s=args.engine_restart_backoff_max,
                          while_core_starts=import_app_modules)
        import prometheus_client
        import uvicorn

        from pagoda.entrypoints.openai.app import build_app
        from pagoda.entrypoints.openai.graceful import graceful_server
        from pagoda.entrypoints.openai.http_protocol import PagodaH11Protocol
        from pagoda.entrypoints.openai.http_protocol import configure as configure_http
        from pagoda.metrics.loggers import LoggingStatLogger
        from pagoda.metrics.prometheus import PrometheusStatLogger

        prometheus_client.disable_created_metrics()
        stats_logger = None if args.disable_log_stats else LoggingStatLogger()
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
        logger.info("API server: froze %d start-up objects out of garbage-collector passes (a full pass over those "
                    "not frozen yet took %.0f ms)", frozen, pass_s * 1e3)
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
