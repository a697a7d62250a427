"""Command-line flags of the OpenAI-compatible server: vLLM's server flags plus every engine flag.

Invariants:
- Engine flags come only from `EngineArgs.add_cli_args` (one declaration of every option);
  `--served-model-name` is the one engine option redeclared, to take several names (vLLM's nargs). vLLM
  server flags Pagoda does not implement are declared once, in vllm_flags.py.
- vLLM's spellings parse as in vLLM: `--flag_name` for `--flag-name`, `--json-flag.key value` for a JSON
  key, `--config FILE.yaml` (its keys are flags; the command line wins over the file).
- Unknown, misspelled or abbreviated flags stop the program; the message names a real flag only when one
  is genuinely close (engine_args_compat.closest_name). `validate_args` checks every server flag, and every
  engine option that needs no model folder, before anything is loaded, and names the flag.
- The API key is --api-key, else PAGODA_API_KEY, else VLLM_API_KEY (vLLM: the flag wins over the variable).
- The request limits (`_add_limit_flags`: per-request caps, slow-client timeouts, the connection cap,
  request chat templates) are validated in `validate_args` too (`_validate_limits`); their automatic
  defaults (None) are resolved against the model at start-up (limits.py, api_server.py).
- --reasoning-parser names a parser registered by then: the built-ins, or one --reasoning-parser-plugin's file
  registered (run in `validate_args`, before the name is checked; the flags and checks live in parser_flags.py);
  anything else stops the server listing the registered names. vLLM's old --enable-reasoning needs --reasoning-parser and changes nothing.
- --tool-call-parser likewise names a registered tool-call parser (built-ins, or one --tool-parser-plugin's
  file registered, run in `validate_args`); an unknown name stops the server listing the registered ones.
  --enable-auto-tool-choice needs --tool-call-parser (vLLM's error); the parser applies only with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from pagoda.engine_args import EngineArgs
from pagoda.engine_args_compat import closest_name, human_readable_int, parse_json
from pagoda.entrypoints.openai import vllm_flags
from pagoda.entrypoints.openai.limits import DEFAULT_MAX_N_SEQUENCES, MAX_N_SEQUENCES_ENV
from pagoda.entrypoints.openai.log_flags import add_log_flags
from pagoda.entrypoints.openai.parser_flags import add_reasoning_flags, add_tool_flags, validate_reasoning, validate_tools

logger = logging.getLogger(__name__)

API_KEY_ENV = "PAGODA_API_KEY"
VLLM_API_KEY_ENV = "VLLM_API_KEY"
CONTENT_FORMATS = ("auto", "string", "openai")
UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DEFAULT_MAX_PENDING = 10_000
DEFAULT_MAX_BODY = 32 * 1024 * 1024
BOOL = argparse.BooleanOptionalAction  # --flag / --no-flag, as vLLM's boolean server flags


class PagodaArgumentParser(argparse.ArgumentParser):
    """argparse that reads vLLM's spellings, refuses abbreviations and suggests only a genuinely close flag."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's signature
        args = self._vllm_spellings(list(sys.argv[1:] if args is None else args))
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown_message(extras))
        return namespace, extras

    def unknown_message(self, extras: list[str]) -> str:
        flags = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        parts = []
        for extra in extras:
            name = extra.split("=", 1)[0]
            close = closest_name(name, flags) if name.startswith("-") else None
            parts.append(f"{extra} (did you mean {close}?)" if close else extra)
        return "unrecognized arguments: " + ", ".join(parts) + f". See `{self.prog} --help` for every flag."

    # ---- vLLM's spellings -----------------------------------------------------------------------------
    def _vllm_spellings(self, args: list[str]) -> list[str]:
        """--config FILE expanded, --flag_name → --flag-name, --json-flag.key value → --json-flag '{"key": ...}'."""
        args = [self._dashed(a) for a in self._expand_config(args)]
        nested: dict[str, dict] = {}
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            name, eq, value = arg.partition("=")
            base, dot, path = name.partition(".")
            action = self._option_string_actions.get(base) if arg.startswith("--") and dot else None
            json_like = action is not None and (action.type is parse_json or getattr(action.type, "json_like", False))
            if not json_like or not path:
                out.append(arg)
                i += 1
                continue
            if not eq:
                if i + 1 >= len(args):
                    self.error(f"argument {name}: expected one argument")
                value, i = args[i + 1], i + 1
            _set_nested(nested.setdefault(base, {}), path, value)
            i += 1
        for base, tree in nested.items():
            out += [base, json.dumps(tree)]
        return out

    def _dashed(self, arg: str) -> str:
        if not arg.startswith("--") or "_" not in arg:
            return arg
        name, eq, value = arg.partition("=")
        base, dot, path = name.partition(".")
        dashed = "--" + base[2:].replace("_", "-")
        if base in self._option_string_actions or dashed not in self._option_string_actions:
            return arg
        return dashed + dot + path + eq + value

    def _expand_config(self, args: list[str]) -> list[str]:
        """vLLM's --config FILE.yaml: the file's flags go first (after a positional model), then the command line's."""
        at = [i for i, a in enumerate(args) if a == "--config" or a.startswith("--config=")]
        if not at:
            return args
        if len(at) > 1:
            self.error("argument --config: give one config file")
        i = at[0]
        if args[i] == "--config":
            if i + 1 >= len(args):
                self.error("argument --config: expected one argument")
            path, rest = args[i + 1], args[:i] + args[i + 2:]
        else:
            path, rest = args[i].split("=", 1)[1], args[:i] + args[i + 1:]
        head = rest[:1] if rest and not rest[0].startswith("-") else []
        return head + self._config_file_args(path) + rest[len(head):]

    def _config_file_args(self, path: str) -> list[str]:
        import yaml  # PyYAML: a dependency of transformers and huggingface-hub

        if not path.endswith((".yaml", ".yml")):
            self.error(f"argument --config: {path!r} must be a .yaml or .yml file")
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as exc:
            self.error(f"argument --config: cannot read {path!r}: {exc.strerror or exc}")
        except yaml.YAMLError as exc:
            self.error(f"argument --config: {path!r} is not valid YAML: {exc}")
        if data is None:
            return []
        if not isinstance(data, dict):
            self.error(f"argument --config: {path!r} must map flag names to values, e.g. 'max-model-len: 4096'")
        out: list[str] = []
        for key, value in data.items():
            flag = "--" + str(key).lstrip("-")
            if value is None:
                continue
            if isinstance(value, bool):
                no_flag = "--no-" + flag[2:]
                if value:
                    out.append(flag)
                elif self._dashed(no_flag) in self._option_string_actions:
                    out.append(no_flag)
            elif isinstance(value, list):
                items = [json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value]
                out += [flag, *items] if items else []
            elif isinstance(value, dict):
                out += [flag, json.dumps(value)]
            else:
                out += [flag, str(value)]
        return out


# EngineArgs options whose flags the server declares itself: one served name per engine (the server takes
# several), and the reasoning parser, which the chat endpoint applies (an offline LLM accepts it, no effect).
SERVER_OWNED_ENGINE_OPTIONS = ("served_model_name", "reasoning_parser", "reasoning_parser_plugin")

def _set_nested(tree: dict, path: str, text: str) -> None:
    """tree[a][b] = value for path 'a.b'; value parsed as JSON, else a human-readable int, else the text;
    'a.b+' appends the comma-separated items to a list (vLLM's dotted JSON flags)."""
    append = path.endswith("+")
    keys = path.rstrip("+").split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise argparse.ArgumentTypeError(f"{path}: {key} is not an object")
    if append:
        tree.setdefault(keys[-1], []).extend(text.split(","))
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = human_readable_int(text)
        except (ValueError, argparse.ArgumentTypeError):
            value = text
    tree[keys[-1]] = value


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
    server.add_argument("--disable-uvicorn-access-log", action=BOOL, default=False,
                        help="Do not log every HTTP request.")
    server.add_argument("--allow-credentials", action=BOOL, default=False, help="CORS: allow credentials.")
    server.add_argument("--allowed-origins", type=_json_or_csv_list, default=["*"],
                        help="CORS: allowed origins, a JSON list or comma-separated.")
    server.add_argument("--allowed-methods", type=_json_or_csv_list, default=["*"], help="CORS: allowed methods.")
    server.add_argument("--allowed-headers", type=_json_or_csv_list, default=["*"], help="CORS: allowed headers.")
    server.add_argument("--api-key", nargs="+", default=None,
                        help=f"If set (else {API_KEY_ENV}, else {VLLM_API_KEY_ENV}), every endpoint but /health, "
                             "/livez, /version and /metrics needs `Authorization: Bearer <key>`. (vLLM takes several keys; "
                             "one works here.)")
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
    server.add_argument("--enable-request-id-headers", action=BOOL, default=False,
                        help="Send X-Request-Id in every response (the client's, or a new one).")
    server.add_argument("--enable-log-requests", action=BOOL, default=None,
                        help="Log each request's prompt and params (an INFO line per request). Default: off, as "
                             "vLLM's since 0.10.2.")
    server.add_argument("--disable-log-requests", action=BOOL, default=None,
                        help="The older spelling (vLLM deprecated it): --disable-log-requests is the default, "
                             "--no-disable-log-requests is --enable-log-requests.")
    server.add_argument("--max-log-len", type=int, default=None,
                        help="Most prompt characters / token ids printed per logged request.")
    server.add_argument("--disable-log-stats", action=BOOL, default=False,
                        help="Do not print the periodic throughput / queue / cache-usage line.")
    server.add_argument("--disable-fastapi-docs", action=BOOL, default=False,
                        help="Turn off /docs, /redoc and /openapi.json.")
    server.add_argument("--return-tokens-as-token-ids", action=BOOL, default=False,
                        help="Write logprob tokens as 'token_id:<id>' (for tokens that are not valid UTF-8).")
    server.add_argument("--enable-prompt-tokens-details", action=BOOL, default=False,
                        help="Report usage.prompt_tokens_details.cached_tokens (prefix-cache hits).")
    server.add_argument("--max-pending-requests", type=int, default=DEFAULT_MAX_PENDING,
                        help="Most unfinished engine requests (max(n, best_of) per prompt of a user request); "
                             "beyond it new requests get 503 with Retry-After, and one request that alone needs "
                             "more gets a 400.")
    server.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_BODY,
                        help="Largest request body accepted; larger ones get 413.")
    _add_limit_flags(server)
    add_reasoning_flags(server)
    add_tool_flags(server)
    server.add_argument("--shutdown-timeout", type=float, default=0.0,
                        help="On SIGTERM/SIGINT, seconds to let in-flight requests finish before the rest are ended "
                             "with an error (streams: an error event and [DONE]; others: 503). 0 (vLLM's default): "
                             "end them at once. New requests get 503 meanwhile.")
    add_log_flags(server)
    health = parser.add_argument_group("engine health and self-healing (Pagoda's own)")
    health.add_argument("--request-timeout", type=float, default=None,
                        help="Abort a request not finished this many seconds after it arrived; its caller gets 504 "
                             "(streams: an error event). Default: no deadline, as vLLM.")
    health.add_argument("--engine-heartbeat-timeout", type=float, default=5.0,
                        help="Declare the engine core unhealthy (and restart it) after this many seconds without "
                             "its once-a-second heartbeat (a stopped or hung process). Must be > 2.")
    health.add_argument("--engine-stall-timeout", type=float, default=60.0,
                        help="Declare the engine core unhealthy when it has work but has run no step for this many "
                             "seconds (vLLM's VLLM_ENGINE_ITERATION_TIMEOUT_S is 60); 0 turns the check off.")
    health.add_argument("--max-engine-restarts", type=int, default=5,
                        help="Restart a dead engine core by itself at most this many times within "
                             "--engine-restart-window; 0 turns self-healing off (a dead core then stays dead, "
                             "/health 503).")
    health.add_argument("--engine-restart-window", type=float, default=300.0,
                        help="Seconds over which --max-engine-restarts is counted.")
    health.add_argument("--engine-restart-backoff", type=float, default=1.0,
                        help="Seconds before the first restart; each further one in the window waits twice as long.")
    health.add_argument("--engine-restart-backoff-max", type=float, default=30.0,
                        help="Longest wait before a restart, in seconds.")
    server.add_argument("--engine-start-timeout", type=float, default=1800.0,
                        help="Seconds to wait for the engine core to load the model.")
    server.add_argument("--config", default=None,
                        help="A YAML file of flags (vLLM's --config): 'max-model-len: 4096', 'enforce-eager: true', "
                             "...; flags on the command line win over the file.")
    EngineArgs.add_cli_args(parser, skip=SERVER_OWNED_ENGINE_OPTIONS)
    vllm_flags.add_server_flags(parser)
    return parser


def _add_limit_flags(server: Any) -> None:
    """Per-request caps, slow-client timeouts, the connection cap and request chat templates (issue 16)."""
    server.add_argument("--max-n-sequences", type=int, default=None,
                        help="Most sequences one request may sample, max(n, best_of); more is a 400 (also when it "
                             f"exceeds --max-pending-requests). Default: ${MAX_N_SEQUENCES_ENV} when set (vLLM's "
                             f"variable for the same cap), else {DEFAULT_MAX_N_SEQUENCES} (OpenAI's limit on n).")
    server.add_argument("--max-prompt-chars", type=int, default=None,
                        help="Longest text prompt (or rendered chat) in characters; longer ones are refused with a "
                             "400 before they are tokenized. Default: max-model-len times the longest vocabulary "
                             "token in characters (no longer text can fit). -1: no limit.")
    server.add_argument("--max-response-logprobs", type=int, default=None,
                        help="Most logprob entries one response may carry: choices x token positions (generated, "
                             "plus the prompt with echo or prompt_logprobs) x (1 + top logprobs); a request that "
                             "could exceed it is a 400. Default: twice max-model-len x (1 + max-logprobs). "
                             "-1: no limit.")
    server.add_argument("--trust-request-chat-template", action=BOOL, default=False,
                        help="Render a chat_template sent in a request (vLLM's flag; without it such requests get a "
                             "400). Request templates render in a separate process, stopped after "
                             "--chat-template-render-timeout seconds, with 1 GiB of memory.")
    server.add_argument("--chat-template-render-timeout", type=float, default=5.0,
                        help="Seconds a request's own chat template may take to render before it is stopped and "
                             "the request gets a 400.")
    server.add_argument("--header-read-timeout", type=float, default=30.0,
                        help="Seconds a client has to send a request's headers, from connecting (or from the first "
                             "byte of a further request on a kept-alive connection); then it is disconnected. "
                             "0: no limit.")
    server.add_argument("--body-read-timeout", type=float, default=60.0,
                        help="Seconds a request body may take, plus one second per --body-read-min-rate bytes "
                             "received, so a slow but steady upload is never cut; past it the answer is 408. "
                             "0: no limit.")
    server.add_argument("--body-read-min-rate", type=int, default=64 * 1024,
                        help="Bytes per second that extend the body deadline (a 32 MB body may take ~9 minutes at "
                             "the default 64 KiB/s); 0: a fixed --body-read-timeout.")
    server.add_argument("--limit-concurrency", type=int, default=None,
                        help="Most open HTTP connections; beyond it requests get 503 + Retry-After (uvicorn's "
                             "setting, answered in OpenAI's error JSON; /health, /version and /metrics are still "
                             "served). Default: --max-pending-requests + 256.")


def _validate_limits(args: argparse.Namespace) -> None:
    if args.max_n_sequences is None:
        value = os.environ.get(MAX_N_SEQUENCES_ENV) or str(DEFAULT_MAX_N_SEQUENCES)
        try:
            args.max_n_sequences = int(value)
        except ValueError:
            raise ValueError(f"{MAX_N_SEQUENCES_ENV} must be an integer, got {value!r}") from None
    if args.max_n_sequences < 1:
        raise ValueError(f"--max-n-sequences must be >= 1, got {args.max_n_sequences}")
    for flag in ("max_prompt_chars", "max_response_logprobs"):
        value = getattr(args, flag)
        if value is not None and value != -1 and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be -1 (no limit) or >= 1, got {value}")
    if not args.chat_template_render_timeout > 0:
        raise ValueError(f"--chat-template-render-timeout must be > 0 seconds, got {args.chat_template_render_timeout}")
    for flag in ("header_read_timeout", "body_read_timeout"):
        value = getattr(args, flag)
        if not value >= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0 seconds (0: no limit), got {value}")
    if args.body_read_min_rate < 0:
        raise ValueError(f"--body-read-min-rate must be >= 0 bytes/s, got {args.body_read_min_rate}")
    if args.limit_concurrency is None:
        args.limit_concurrency = args.max_pending_requests + 256
    elif args.limit_concurrency < 1:
        raise ValueError(f"--limit-concurrency must be >= 1, got {args.limit_concurrency}")


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
    if not args.shutdown_timeout >= 0:
        raise ValueError(f"--shutdown-timeout must be >= 0 seconds, got {args.shutdown_timeout}")
    if args.request_timeout is not None and not args.request_timeout > 0:
        raise ValueError(f"--request-timeout must be > 0 seconds, got {args.request_timeout}")
    if not args.engine_heartbeat_timeout > 2:
        raise ValueError(f"--engine-heartbeat-timeout must be > 2 seconds (the heartbeat is sent every second), "
                         f"got {args.engine_heartbeat_timeout}")
    if not args.engine_stall_timeout >= 0:
        raise ValueError(f"--engine-stall-timeout must be >= 0 seconds (0: off), got {args.engine_stall_timeout}")
    if args.max_engine_restarts < 0:
        raise ValueError(f"--max-engine-restarts must be >= 0, got {args.max_engine_restarts}")
    for flag in ("engine_restart_window", "engine_restart_backoff", "engine_restart_backoff_max"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0 seconds, got {getattr(args, flag)}")
    if args.max_pending_requests < 1:
        raise ValueError(f"--max-pending-requests must be >= 1, got {args.max_pending_requests}")
    if args.max_request_body_bytes < 1024:
        raise ValueError(f"--max-request-body-bytes must be >= 1024, got {args.max_request_body_bytes}")
    _validate_limits(args)
    args.api_key = _api_key(args.api_key)
    _resolve_log_requests(args)
    if args.served_model_name is not None and not all(args.served_model_name):
        raise ValueError("--served-model-name names must be non-empty")
    template = args.chat_template
    if template is not None and not os.path.isfile(os.path.expanduser(template)) and not any(
            marker in template for marker in ("{{", "{%", "{#")):
        raise ValueError(f"--chat-template {template!r} is neither an existing file nor a Jinja template")
    if args.root_path is not None and args.root_path and not args.root_path.startswith("/"):
        raise ValueError(f"--root-path must start with '/', got {args.root_path!r}")
    validate_reasoning(args)
    validate_tools(args)
    vllm_flags.check_server_flags(args)
    engine_args_from(args).check_options()  # an engine option not supported yet stops here, before any loading


def _api_key(given: list[str] | str | None) -> str | None:
    """--api-key (vLLM: a list of keys), else PAGODA_API_KEY, else VLLM_API_KEY; empty values count as unset."""
    keys = [given] if isinstance(given, str) else [k for k in (given or []) if k]
    if len(keys) > 1:
        raise ValueError(f"--api-key with {len(keys)} keys is not supported yet: give one key")
    if keys:
        return keys[0]
    pagoda_key, vllm_key = os.environ.get(API_KEY_ENV) or None, os.environ.get(VLLM_API_KEY_ENV) or None
    if pagoda_key and vllm_key and pagoda_key != vllm_key:
        logger.warning("%s and %s differ; the server takes %s", API_KEY_ENV, VLLM_API_KEY_ENV, API_KEY_ENV)
    return pagoda_key or vllm_key


def _resolve_log_requests(args: argparse.Namespace) -> None:
    """--[no-]enable-log-requests and the older --[no-]disable-log-requests onto `disable_log_requests` (True unless
    one asks for the log, as vLLM's default since 0.10.2; both given: they must agree)."""
    enable = getattr(args, "enable_log_requests", None)
    disable = getattr(args, "disable_log_requests", None)
    if enable is not None and disable is not None and enable == disable:
        raise ValueError(f"--{'' if enable else 'no-'}enable-log-requests contradicts "
                         f"--{'' if disable else 'no-'}disable-log-requests; give one")
    if enable is not None:
        args.disable_log_requests = not enable
    elif disable is None:
        args.disable_log_requests = True


def engine_args_from(args: argparse.Namespace) -> EngineArgs:
    # The server's own flags of the same names are not the engine's (see SERVER_OWNED_ENGINE_OPTIONS).
    engine_args = EngineArgs.from_cli_args(argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k not in SERVER_OWNED_ENGINE_OPTIONS}))
    engine_args.served_model_name = args.served_model_name[0] if args.served_model_name else None
    _reasoning_for_structured_outputs(engine_args, getattr(args, "reasoning_parser", None))
    return engine_args


def _reasoning_for_structured_outputs(engine_args: EngineArgs, parser: str | None) -> None:
    """--reasoning-parser tells the engine where reasoning ends, so that grammars start after it (vLLM's
    structured_outputs_config.reasoning_parser); parsers without a one-token end marker cannot say so."""
    if not parser:
        return
    from pagoda.config import REASONING_MARKER_TOKENS

    given = engine_args.structured_outputs_config
    given = dict(given) if isinstance(given, dict) else {} if given is None else None
    if given is None or given.get("reasoning_parser"):
        return  # a StructuredOutputsConfig object, or the reasoning parser given there already
    if parser in REASONING_MARKER_TOKENS:
        given["reasoning_parser"] = parser
        engine_args.structured_outputs_config = given
    elif not given.get("enable_in_reasoning"):
        logger.warning("--reasoning-parser %s: its end of reasoning is text, not one token, so structured output "
                       "constrains the reasoning too (as with enable_in_reasoning)", parser)


def served_model_names(args: argparse.Namespace) -> list[str]:
    return list(args.served_model_name) if args.served_model_name else [args.model]
