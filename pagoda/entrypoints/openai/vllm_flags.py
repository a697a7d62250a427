"""vLLM server (frontend) flags that `pagoda serve` accepts without implementing them (yet).

The server-side counterpart of `pagoda/engine_args_compat.py`: each flag of vLLM's FrontendArgs and
`make_arg_parser` that Pagoda's server does not implement is one `Compat` record here, with vLLM's
value type, short aliases and default, and one of two kinds:

- NOT_YET (tool calling, LoRA modules, extra endpoints, ...): its default is fine; another value stops
  the server with an error that names the flag and says "not supported yet".
- NO_EFFECT: accepted; a non-default value is logged once, with the reason.

Sources: vllm/entrypoints/openai/cli_args.py (BaseFrontendArgs, FrontendArgs, make_arg_parser) and the
`vllm serve --help` of vLLM 0.17.1 (Frontend and options groups).

Invariants: a flag is declared here once, with nothing about it elsewhere; `check_server_flags` only reads
the parsed values; the flags Pagoda implements (--host, --api-key, --chat-template,
--trust-request-chat-template, --enable-auto-tool-choice, --tool-call-parser, ...) are declared in cli_args.py and never here.
"""

from __future__ import annotations

import argparse
from typing import Any

from pagoda.engine_args_compat import (
    APPEND, BOOL, FLOAT, INT, JSON, NO_EFFECT, NOT_YET, STR, STRS, Compat, check, cli_kwargs, log_no_effect,
)

TOOLS = "this tool-calling option is not implemented yet (--enable-auto-tool-choice is)"
LORA = "LoRA adapters come in a later issue"
PARALLEL = "data parallelism comes in a later issue"
LOGGING = "this logging option is not implemented yet"
ENDPOINT = "this endpoint or response field is not implemented yet"
HTTP = "this HTTP server setting is not passed to uvicorn yet"
LATE = "Pagoda serves no late-interaction (ColBERT-style) pooling models"
COHERE = "Pagoda has no Cohere /cohere/v2/chat endpoint"

SERVER_OPTIONS: tuple[Compat, ...] = (
    Compat("api_server_count", INT, None, NOT_YET, "one API server process serves all requests", ("-asc",),
           accepts=(1,)),
    Compat("headless", BOOL, False, NOT_YET, PARALLEL),
    Compat("grpc", BOOL, False, NOT_YET, "the gRPC server is not implemented yet"),
    Compat("uds", STR, None, NOT_YET, "Unix-domain sockets are not implemented yet; use --host/--port"),
    Compat("data_parallel_supervisor_port", INT, 9256, NOT_YET, PARALLEL),
    Compat("dp_supervisor_probe_interval_s", FLOAT, 5.0, NOT_YET, PARALLEL),
    Compat("dp_supervisor_probe_timeout_s", FLOAT, 5.0, NOT_YET, PARALLEL),
    Compat("dp_supervisor_probe_failure_threshold", INT, 3, NOT_YET, PARALLEL),
    Compat("lora_modules", STRS, None, NOT_YET, LORA),
    Compat("exclude_tools_when_tool_choice_none", BOOL, False, NOT_YET, TOOLS),
    Compat("tool_server", STR, None, NOT_YET, TOOLS),
    Compat("default_chat_template_kwargs", JSON, None, NOT_YET,
           "server-wide chat-template kwargs are not implemented yet (requests' chat_template_kwargs work)"),
    Compat("enable_force_include_usage", BOOL, False, NOT_YET, ENDPOINT),
    Compat("enable_tokenizer_info_endpoint", BOOL, False, NOT_YET, ENDPOINT),
    Compat("enable_server_load_tracking", BOOL, False, NOT_YET, ENDPOINT),
    Compat("enable_per_request_metrics", BOOL, False, NOT_YET, ENDPOINT),
    Compat("tokens_only", BOOL, False, NOT_YET, ENDPOINT),
    Compat("enable_offline_docs", BOOL, False, NOT_YET, ENDPOINT),
    Compat("fingerprint_mode", STR, "full", NOT_YET, ENDPOINT),
    Compat("fingerprint_value", STR, None, NOT_YET, ENDPOINT),
    Compat("middleware", APPEND, None, NOT_YET, "extra ASGI middleware is not loaded yet"),
    Compat("log_config_file", STR, None, NOT_YET, LOGGING),
    Compat("enable_log_outputs", BOOL, False, NOT_YET, LOGGING),
    Compat("log_error_stack", BOOL, False, NOT_YET, LOGGING),
    Compat("disable_access_log_for_endpoints", STR, None, NOT_YET, LOGGING),
    Compat("enable_ssl_refresh", BOOL, False, NOT_YET, HTTP),
    Compat("ssl_ciphers", STR, None, NOT_YET, HTTP),
    Compat("h11_max_incomplete_event_size", INT, 4194304, NOT_YET, HTTP),
    Compat("h11_max_header_count", INT, 256, NOT_YET, HTTP),
    Compat("disable_frontend_multiprocessing", BOOL, False, NO_EFFECT,
           "the HTTP frontend always runs in its own process, apart from the engine core"),
    Compat("enable_log_deltas", BOOL, True, NO_EFFECT, "outputs are not logged (--enable-log-outputs), so neither "
                                                       "are their deltas"),
    Compat("fail_on_environ_validation", BOOL, False, NO_EFFECT, "Pagoda reads no VLLM_* variables to validate "
                                                                 "(VLLM_API_KEY only)"),
    Compat("use_gpu_for_pooling_score", BOOL, False, NO_EFFECT, LATE),
    Compat("enable_flash_late_interaction", BOOL, True, NO_EFFECT, LATE),
    Compat("cohere_is_reasoning_model", BOOL, True, NO_EFFECT, COHERE),
    Compat("cohere_format", STR, "cmd4", NO_EFFECT, COHERE),
)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "vLLM server arguments Pagoda accepts without implementing them",
        "Their defaults are fine; other values stop with 'not supported yet', or are logged as having no effect.")
    for opt in SERVER_OPTIONS:
        group.add_argument(opt.flag, *opt.flags, **cli_kwargs(opt.kind, opt.default, opt.help()))


def check_server_flags(args: argparse.Namespace) -> None:
    """ValueError naming the first flag whose feature is not supported yet; logs the no-effect ones."""
    values: dict[str, Any] = vars(args)
    check(values, SERVER_OPTIONS)
    log_no_effect(values, SERVER_OPTIONS)
