"""Log set-up of Pagoda's programs: every record goes to stdout, as text (default) or as one JSON object.

    configure_logging("INFO", "json")          # the server: --log-level / --log-format
    uvicorn_log_config("json")                 # uvicorn.Config(log_config=...): uvicorn's records alike

`--log-format` is Pagoda's flag; vLLM (0.32+) spells the same choice `--logging-config.formatter json`, which the
server accepts too (cli_args.py). vLLM also writes its logs to stdout.

JSON records (one per line, for log collectors such as Loki, Fluent Bit or OpenShift's logging stack):

    {"time": "2026-12-01T10:00:00.123+00:00", "level": "INFO", "logger": "pagoda.engine.core",
     "process": "core", "message": "...", "request_id": "cmpl-...", "exception": "Traceback ...\\n..."}

`request_id` appears when the record carries one (`logger.info(..., extra={"request_id": rid})`), `exception`
when it has exc_info or stack_info; both are JSON strings, so a traceback stays inside its one line.

Invariants:
- One event is one line on stdout in JSON format: json.dumps escapes every newline of the message and the
  traceback, and Python warnings become records (logging.captureWarnings). The text format is the one
  Pagoda always had (`LEVEL HH:MM:SS.mmm name: message`), only on stdout instead of stderr.
- The format chosen by the frontend reaches every child process: `configure_logging` records it in the
  PAGODA_LOG_FORMAT environment variable, which spawned processes (engine core, template sandbox) inherit
  and read when they configure their own logging with `log_format=None`.
- `configure_logging` replaces the root logger's handlers (idempotent: calling it twice leaves one handler).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any

LOG_FORMAT_ENV = "PAGODA_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(asctime)s.%(msecs)03d %(name)s: %(message)s"
TEXT_DATEFMT = "%H:%M:%S"


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, process, message, [request_id, exception]."""

    def __init__(self, process_name: str | None = None) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": self.process_name or record.processName,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = str(request_id)
        exception = []
        if record.exc_info:
            exception.append(record.exc_text or self.formatException(record.exc_info))
        if record.stack_info:
            exception.append(self.formatStack(record.stack_info))
        if exception:
            entry["exception"] = "\n".join(exception)
        return json.dumps(entry, ensure_ascii=False, default=str)


def resolve_format(log_format: str | None) -> str:
    """`log_format`, else PAGODA_LOG_FORMAT, else "text"; ValueError naming the choices for anything else."""
    value = (log_format or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


def make_formatter(log_format: str, process_name: str | None = None, text_format: str = TEXT_FORMAT
                   ) -> logging.Formatter:
    if log_format == "json":
        return JSONFormatter(process_name)
    return logging.Formatter(text_format, datefmt=TEXT_DATEFMT)


def configure_logging(level: int | str = "INFO", log_format: str | None = None, process_name: str | None = None,
                      text_format: str = TEXT_FORMAT) -> str:
    """Root logger → one stdout handler in `log_format` (None: PAGODA_LOG_FORMAT, else text); returns the format.

    The format is exported in PAGODA_LOG_FORMAT, so child processes started afterwards log the same way."""
    log_format = resolve_format(log_format)
    os.environ[LOG_FORMAT_ENV] = log_format
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(make_formatter(log_format, process_name, text_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(log_format == "json")  # warnings.warn output becomes a record too, not stray text
    return log_format


def uvicorn_log_config(log_format: str | None = None) -> dict:
    """uvicorn's logging dictConfig with its records on stdout: its own formats for text, JSONFormatter for json."""
    log_format = resolve_format(log_format)
    if log_format == "json":
        formatters = {name: {"()": JSONFormatter, "process_name": "api_server"} for name in ("default", "access")}
    else:
        formatters = {
            "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s",
                        "use_colors": None},
            "access": {"()": "uvicorn.logging.AccessFormatter",
                       "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {
            "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
