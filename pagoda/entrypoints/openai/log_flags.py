"""The server's logging flags: --log-format (Pagoda's) and vLLM's --logging-config (JSON, or dotted fields).

    --log-format json                      one JSON object per log line on stdout (logging_utils.py)
    --logging-config.formatter json        vLLM 0.32's spelling of the same
    --logging-config.log_level DEBUG       = --log-level DEBUG

Invariants: `logging_choice` only reads the parsed flags and returns (level, format); a contradiction between
the two spellings, an unknown field or a value outside the choices is a ValueError naming the flag. vLLM's
fields that would hand logging to a user file (`pylogging_config_file`, `configure_logging false`) are refused
as not supported yet, never ignored.
"""

from __future__ import annotations

import argparse
from typing import Any

from pagoda.engine_args_compat import parse_json
from pagoda.logging_utils import LOG_FORMAT_ENV, LOG_FORMATS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_log_flags(server: Any) -> None:
    server.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="How log records are written to stdout: 'text' (default), or 'json': one JSON object "
                             "per line (time, level, logger, process, message, request_id, exception) for log "
                             f"collectors. Child processes follow it. Default: ${LOG_FORMAT_ENV}, else text.")
    server.add_argument("--logging-config", type=parse_json, default=None,
                        help="vLLM's logging settings as JSON, or dotted: --logging-config.formatter json "
                             "(= --log-format json), --logging-config.log_level DEBUG (= --log-level DEBUG).")


def logging_choice(args: argparse.Namespace) -> tuple[str, str | None]:
    """(log level, log format) from --log-level / --log-format and vLLM's --logging-config; ValueError names the
    flag. The format None means: PAGODA_LOG_FORMAT, else text (logging_utils.resolve_format)."""
    level, log_format = getattr(args, "log_level", None) or "INFO", getattr(args, "log_format", None)
    given = getattr(args, "logging_config", None)
    if given is None:
        return str(level).upper(), log_format
    if not isinstance(given, dict):
        raise ValueError(f"--logging-config must be a JSON object, got {given!r}")
    unknown = sorted(set(given) - {"formatter", "log_level", "configure_logging", "pylogging_config_file"})
    if unknown:
        raise ValueError(f"--logging-config: unknown field(s) {', '.join(unknown)} (known: formatter, log_level, "
                         "configure_logging, pylogging_config_file)")
    if given.get("configure_logging", True) is not True or given.get("pylogging_config_file"):
        raise ValueError("--logging-config.configure_logging false and --logging-config.pylogging_config_file are "
                         "not supported yet: Pagoda always configures its logging (--log-format, --log-level)")
    formatter = given.get("formatter")
    if formatter is not None:
        if formatter not in LOG_FORMATS:
            raise ValueError(f"--logging-config.formatter must be one of {', '.join(LOG_FORMATS)}, got {formatter!r}")
        if log_format is not None and log_format != formatter:
            raise ValueError(f"--log-format {log_format} contradicts --logging-config.formatter {formatter}; give one")
        log_format = formatter
    if given.get("log_level") is not None:
        level = str(given["log_level"]).upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"--logging-config.log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                             f"got {given['log_level']!r}")
    return str(level).upper(), log_format
