"""`pagoda bench serve` against a live `pagoda serve` (the session's shared server)."""

import argparse
import time

from openai_server_utils import API_KEY, MODEL_NAME
from pagoda.entrypoints.cli.bench import add_bench_parser, run_bench


def test_bench_serve_against_live_server(server, model_dir, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    parser = argparse.ArgumentParser(prog="pagoda")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "bench", "serve", "--base-url", server.url, "--model", MODEL_NAME, "--tokenizer", model_dir,
        "--num-prompts", "12", "--input-len", "16", "--output-len", "6", "--ignore-eos",
        "--max-concurrency", "4", "--disable-tqdm",
    ])
    result = run_bench(args)
    out = capsys.readouterr().out
    assert "============ Serving Benchmark Result ============" in out
    m = result["points"][0]["metrics"]
    assert m["completed"] == 12 and m["failed"] == 0
    assert m["total_input_tokens"] == 12 * 16
    assert m["total_output_tokens"] == 12 * 6  # ignore_eos: every request runs to max_tokens
    assert 0 < m["median_ttft_ms"] < m["median_e2el_ms"]
    deadline = time.monotonic() + 10  # stats reach the frontend with the engine's next report
    while server.metric("vllm:num_requests_running", model_name=MODEL_NAME) != 0:
        assert time.monotonic() < deadline, "requests still running after the benchmark finished"
        time.sleep(0.1)
