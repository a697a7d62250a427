"""Start-up: misspelled flags, a bad model, a taken port and an engine that cannot start all stop the
server at once with a message that says what is wrong; `pagoda serve MODEL` starts the same server."""

import os
import socket
import subprocess
import sys

from openai_server_utils import REPO, RemoteServer, httpx, output

ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run(args, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def test_misspelled_flag_names_the_right_one(model_dir):
    result = run(["-m", "pagoda.entrypoints.cli.main", "serve", model_dir, "--max-modle-len", "64"], timeout=60)
    assert result.returncode == 2
    assert "--max-modle-len" in result.stderr and "did you mean --max-model-len?" in result.stderr
    result = run(["-m", "pagoda.entrypoints.openai.api_server", "--model", model_dir, "--prot", "8000"], timeout=60)
    assert result.returncode == 2 and "did you mean --port?" in result.stderr


def test_abbreviated_flag_is_refused(model_dir):
    result = run(["-m", "pagoda.entrypoints.openai.api_server", "--model", model_dir, "--max-model", "64"], timeout=60)
    assert result.returncode == 2 and "--max-model-len" in result.stderr


def test_missing_model_fails_fast(tmp_path):
    result = run(["-m", "pagoda.entrypoints.openai.api_server", "--model", str(tmp_path / "nope"), "--port", "0"])
    assert result.returncode == 1
    assert "model=" in output(result) and "nope" in output(result)


def test_bad_server_flag_is_named(model_dir):
    result = run(["-m", "pagoda.entrypoints.openai.api_server", "--model", model_dir, "--ssl-keyfile", "/no/key.pem"])
    assert result.returncode == 1 and "--ssl-keyfile" in output(result)


def test_taken_port_is_reported(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run(["-m", "pagoda.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
                      "--port", str(port)])
    assert result.returncode == 1 and f"127.0.0.1:{port}" in output(result) and "--port" in output(result)


def test_engine_start_failure_carries_the_core_error(model_dir):
    result = run(["-m", "pagoda.entrypoints.openai.api_server", "--model", model_dir, "--port", "0",
                  "--max-model-len", "512", "--num-gpu-blocks-override", "2"], timeout=240)
    assert result.returncode == 1
    assert "engine core failed to start" in output(result) and "max_model_len" in output(result)


def test_pagoda_serve_command(model_dir, tmp_path):
    # `pagoda serve MODEL` (the console script's route) starts the same server.
    server = RemoteServer([model_dir, "--max-model-len", "256", "--served-model-name", "demo"],
                          str(tmp_path / "serve.log"), entry=("-m", "pagoda.entrypoints.cli.main", "serve"))
    try:
        out = server.client().chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=3)
        assert out.choices[0].message.content is not None and out.model == "demo"
        assert httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"] == "demo"
    finally:
        server.close()
    assert server.proc.returncode == 0  # SIGTERM: a graceful stop that also stops the engine core
    assert "engine core stopped (exit code 0)" in server.log()


def test_gc_debug_value_it_does_not_understand_stops_the_start(model_dir):
    env = {**ENV, "VLLM_GC_DEBUG": "verbose"}
    result = subprocess.run([sys.executable, "-m", "pagoda.entrypoints.openai.api_server", "--model", model_dir,
                             "--port", "0"], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert result.returncode == 1
    assert "VLLM_GC_DEBUG='verbose' is not understood" in output(result) and "top_objects" in output(result)
