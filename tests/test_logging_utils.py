"""Log formats (logging_utils.py, --log-format): text keeps Pagoda's line format; json writes one object per record
(a traceback stays on its line), carries request_id, reaches child processes; vLLM's --logging-config spelling."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings

import pytest

from pagoda.logging_utils import LOG_FORMAT_ENV, configure_logging, resolve_format, uvicorn_log_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restore_logging(monkeypatch):
    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def _emit_all(log: logging.Logger) -> None:
    log.info("plain %s", "message")
    log.warning("about a request", extra={"request_id": "cmpl-42"})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("it failed")


def test_text_format_is_unchanged_and_on_stdout(restore_logging, capsys):
    assert configure_logging("INFO") == "text" and os.environ[LOG_FORMAT_ENV] == "text"
    _emit_all(logging.getLogger("pagoda.test"))
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert re.fullmatch(r"INFO \d\d:\d\d:\d\d\.\d{3} pagoda\.test: plain message", lines[0]), lines[0]
    assert re.fullmatch(r"WARNING \d\d:\d\d:\d\d\.\d{3} pagoda\.test: about a request", lines[1]), lines[1]
    assert "Traceback" in out and "RuntimeError: boom" in out


def test_json_format_one_object_per_record(restore_logging, capsys):
    assert configure_logging("DEBUG", "json", process_name="api_server") == "json"
    configure_logging("DEBUG", "json", process_name="api_server")  # twice: still one handler
    assert len(logging.getLogger().handlers) == 1
    _emit_all(logging.getLogger("pagoda.test"))
    warnings.warn("a library warning", UserWarning, stacklevel=1)
    out, err = capsys.readouterr()
    assert err == ""
    records = [json.loads(line) for line in out.splitlines()]  # each line parses: one event, one line
    assert len(records) == 4
    first, second, third, fourth = records
    assert first["level"] == "INFO" and first["logger"] == "pagoda.test" and first["message"] == "plain message"
    assert first["process"] == "api_server" and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert "request_id" not in first and "exception" not in first
    assert second["request_id"] == "cmpl-42" and second["level"] == "WARNING"
    assert third["level"] == "ERROR" and third["message"] == "it failed"
    assert third["exception"].startswith("Traceback") and "RuntimeError: boom\nsecond line" in third["exception"]
    assert fourth["logger"] == "py.warnings" and "a library warning" in fourth["message"]


def test_the_format_reaches_child_processes(restore_logging):
    configure_logging("INFO", "json")
    code = ("import logging; from pagoda.logging_utils import configure_logging; "
            "configure_logging('INFO', None, process_name='core'); logging.getLogger('x').info('from the child')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO}).stdout
    record = json.loads(out.strip())
    assert record["message"] == "from the child" and record["process"] == "core"


def test_bad_format_names_the_flag(monkeypatch):
    with pytest.raises(ValueError, match="--log-format must be one of text, json"):
        resolve_format("yaml")
    monkeypatch.setenv(LOG_FORMAT_ENV, "xml")
    with pytest.raises(ValueError, match="'xml'"):
        resolve_format(None)


def test_uvicorn_config_writes_to_stdout():
    for fmt in ("text", "json"):
        config = uvicorn_log_config(fmt)
        assert {h["stream"] for h in config["handlers"].values()} == {"ext://sys.stdout"}
    assert uvicorn_log_config("json")["formatters"]["access"]["process_name"] == "api_server"


def test_vllm_logging_config_spelling():
    from pagoda.entrypoints.openai.api_server import make_parser
    from pagoda.entrypoints.openai.log_flags import logging_choice

    parse = make_parser().parse_args
    assert logging_choice(parse(["--model", "m", "--logging-config.formatter", "json",
                                 "--logging-config.log_level", "debug"])) == ("DEBUG", "json")
    assert logging_choice(parse(["--model", "m", "--logging-config", '{"formatter": "text"}'])) == ("INFO", "text")
    assert logging_choice(parse(["--model", "m", "--log-format", "json"])) == ("INFO", "json")
    for argv, message in [
        (["--log-format", "json", "--logging-config.formatter", "text"], "contradicts"),
        (["--logging-config.formatter", "yaml"], "--logging-config.formatter must be one of"),
        (["--logging-config.colour", "x"], "unknown field"),
        (["--logging-config.pylogging_config_file", "/x.json"], "not supported yet"),
    ]:
        with pytest.raises(ValueError, match=message):
            logging_choice(parse(["--model", "m", *argv]))
