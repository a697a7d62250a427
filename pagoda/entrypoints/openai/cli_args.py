"""Command-line flags of the OpenAI-compatible server: vLLM's server flags plus every engine flag.

Invariants:
- Engine flags come only from `EngineArgs.add_cli_args` (one declaration of every option);
  `--served-model-name` is the one engine option redeclared, to take several names (vLLM's nargs).
- Unknown, misspelled or abbreviated flags stop the program with a message that names the closest
  real flag; `validate_args` checks every server flag before anything is loaded and names the flag.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os

from pagoda.engine_args import EngineArgs

API_KEY_ENV = "PAGODA_API_KEY"
CONTENT_FORMATS = ("auto", "string", "openai")
UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DEFAULT_MAX_PENDING = 10_000
DEFAULT_MAX_BODY = 32 * 1024 * 1024


class PagodaArgumentParser(argparse.ArgumentParser):
    """argparse that refuses abbreviations and suggests the closest flag for an unknown one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's signature
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown_message(extras))
        return namespace, extras

    def unknown_message(self, extras: list[str]) -> str:
        flags = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        parts = []
        for extra in extras:
            name = extra.split("=", 1)[0]
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6) if name.startswith("-") else []
            parts.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
        return "unrecognized arguments: " + ", ".join(parts) + f". See `{self.prog} --help` for every flag."


def _json_or_csv_list(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        parsed = json.loads(value)
        if not isinstance(parsed, list):
            raise argparse.ArgumentTypeError(f"expected a JSON list, got {value!r}")
        return [str(v) for v in parsed]
    return [v.strip() for v in value.split(",") if v.strip()]


def make_arg_parser(parser: argparse.ArgumentParser, model_positional: bool = False) -> argparse.ArgumentParser:
    """Add the server flags and the engine flags to `parser`."""
    if model_positional:
        parser.add_argument("model_tag", nargs="?", default=None,
                            help="The model folder (or cached hub id) to serve; same as --model.")
    server = parser.add_argument_group("server arguments")
    server.add_argument("--host", default="0.0.0.0", help="Host name or address to listen on.")
    server.add_argument("--port", type=int, default=8000, help="Port to listen on (0 picks a free one).")
    server.add_argument("--uvicorn-log-level", default="info", choices=UVICORN_LOG_LEVELS,
                        help="Log level of uvicorn.")
    server.add_argument("--disable-uvicorn-access-log", action="store_true", help="Do not log every HTTP request.")
    server.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials.")
    server.add_argument("--allowed-origins", type=_json_or_csv_list, default=["*"],
                        help="CORS: allowed origins, a JSON list or comma-separated.")
    server.add_argument("--allowed-methods", type=_json_or_csv_list, default=["*"], help="CORS: allowed methods.")
    server.add_argument("--allowed-headers", type=_json_or_csv_list, default=["*"], help="CORS: allowed headers.")
    server.add_argument("--api-key", default=None,
                        help=f"If set (or {API_KEY_ENV} is), every endpoint but /health, /version and /metrics "
                             "needs `Authorization: Bearer <key>`.")
    server.add_argument("--served-model-name", nargs="+", default=None,
                        help="Model name(s) the API answers to; the first is used in responses. Default: --model.")
    server.add_argument("--chat-template", default=None,
                        help="Chat template: a file path or the Jinja template itself. Default: the tokenizer's.")
    server.add_argument("--chat-template-content-format", default="auto", choices=CONTENT_FORMATS,
                        help="How message content reaches the template: 'string', or 'openai' (a list of parts); "
                             "'auto' detects it from the template.")
    server.add_argument("--response-role", default="assistant",
                        help="Role of generated chat messages when add_generation_prompt is true.")
    server.add_argument("--ssl-keyfile", default=None, help="TLS private key file.")
    server.add_argument("--ssl-certfile", default=None, help="TLS certificate file.")
    server.add_argument("--ssl-ca-certs", default=None, help="CA certificates file (to check client certificates).")
    server.add_argument("--ssl-cert-reqs", type=int, default=0,
                        help="Whether client certificates are required (ssl.CERT_NONE=0, OPTIONAL=1, REQUIRED=2).")
    server.add_argument("--root-path", default=None, help="Path prefix the server sits under behind a proxy.")
    server.add_argument("--enable-request-id-headers", action="store_true",
                        help="Send X-Request-Id in every response (the client's, or a new one).")
    server.add_argument("--disable-log-requests", action="store_true", help="Do not log each request's prompt and params.")
    server.add_argument("--max-log-len", type=int, default=None,
                        help="Most prompt characters / token ids printed per logged request.")
    server.add_argument("--disable-log-stats", action="store_true",
                        help="Do not print the periodic throughput / queue / cache-usage line.")
    server.add_argument("--disable-fastapi-docs", action="store_true", help="Turn off /docs, /redoc and /openapi.json.")
    server.add_argument("--return-tokens-as-token-ids", action="store_true",
                        help="Write logprob tokens as 'token_id:<id>' (for tokens that are not valid UTF-8).")
    server.add_argument("--enable-prompt-tokens-details", action="store_true",
                        help="Report usage.prompt_tokens_details.cached_tokens (prefix-cache hits).")
    server.add_argument("--max-pending-requests", type=int, default=DEFAULT_MAX_PENDING,
                        help="Most unfinished engine requests (n per user request); beyond it new requests get "
                             "503 with Retry-After.")
    server.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_BODY,
                        help="Largest request body accepted; larger ones get 413.")
    server.add_argument("--engine-start-timeout", type=float, default=1800.0,
                        help="Seconds to wait for the engine core to load the model.")
    EngineArgs.add_cli_args(parser, skip=("served_model_name",))
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Check server flags (ValueError naming the flag); resolves --model and the API key."""
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    if not args.model:
        raise ValueError("a model is required: `pagoda serve MODEL` or --model MODEL")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        raise ValueError("--ssl-keyfile and --ssl-certfile must be given together")
    for flag in ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"--{flag.replace('_', '-')} {path!r} is not a file")
    if args.max_log_len is not None and args.max_log_len < 0:
        raise ValueError(f"--max-log-len must be >= 0, got {args.max_log_len}")
    if args.max_pending_requests < 1:
        raise ValueError(f"--max-pending-requests must be >= 1, got {args.max_pending_requests}")
    if args.max_request_body_bytes < 1024:
        raise ValueError(f"--max-request-body-bytes must be >= 1024, got {args.max_request_body_bytes}")
    if args.api_key is None:
        args.api_key = os.environ.get(API_KEY_ENV) or None
    if args.served_model_name is not None and not all(args.served_model_name):
        raise ValueError("--served-model-name names must be non-empty")
    template = args.chat_template
    if template is not None and not os.path.isfile(os.path.expanduser(template)) and not any(
            marker in template for marker in ("{{", "{%", "{#")):
        raise ValueError(f"--chat-template {template!r} is neither an existing file nor a Jinja template")
    if args.root_path is not None and args.root_path and not args.root_path.startswith("/"):
        raise ValueError(f"--root-path must start with '/', got {args.root_path!r}")


def engine_args_from(args: argparse.Namespace) -> EngineArgs:
    engine_args = EngineArgs.from_cli_args(args)
    engine_args.served_model_name = args.served_model_name[0] if args.served_model_name else None
    return engine_args


def served_model_names(args: argparse.Namespace) -> list[str]:
    return list(args.served_model_name) if args.served_model_name else [args.model]
