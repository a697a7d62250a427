"""The benchmark suite's workload table and the command lines it builds (no GPU, nothing run)."""

import argparse
import os

import pytest

from pagoda.benchmarks import suite
from pagoda.entrypoints.cli.bench import add_bench_parser


def bench_args(cmd):
    """Parse a suite command with the real `pagoda bench` parser (an unknown flag fails here)."""
    assert cmd[: len(suite.BENCH)] == suite.BENCH
    parser = argparse.ArgumentParser(prog="pagoda")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *cmd[len(suite.BENCH):]])


@pytest.fixture
def make_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_COMMIT", "test")
    monkeypatch.setattr(suite, "gpu", lambda: "cpu")

    def build(*argv):
        return suite.Suite(suite.make_parser().parse_args(["--out", str(tmp_path / "out"), "--table", "", *argv]))

    return build


def by_backend(runs):
    return {r.backend: r for r in runs}


def test_workload_names():
    parser = suite.make_parser()
    assert suite.parse_workloads(parser, []) == [f"W{i}" for i in range(1, 13)]
    assert suite.parse_workloads(parser, ["all"]) == list(suite.WORKLOADS)
    assert suite.parse_workloads(parser, ["w7", "W12"]) == ["W7", "W12"]
    with pytest.raises(SystemExit):
        suite.parse_workloads(parser, ["W13"])


def test_w7_is_w2_with_sampling_heavy_params(make_suite):
    s = make_suite()
    runs = by_backend(s.offline_runs("W7"))
    w2 = by_backend(s.offline_runs("W2"))
    for backend in ("pagoda", "transformers"):
        a, base = bench_args(runs[backend].cmd), bench_args(w2[backend].cmd)
        assert (a.num_prompts, a.input_len, a.output_len) == (base.num_prompts, base.input_len, base.output_len) == (1000, 128, 128)
        assert (a.temperature, a.top_p, a.top_k, a.repetition_penalty, a.logprobs) == (0.8, 0.95, 50, 1.1, 5)
        assert (base.temperature, base.logprobs) == (None, None)
    assert bench_args(runs["transformers"].cmd).backend == "hf"
    assert bench_args(runs["transformers"].cmd).hf_max_batch_size == suite.HF_BATCH["W2"]
    assert runs["pagoda"].json_path.endswith("W7-pagoda.json")


def test_w8_shared_prefix_with_prefix_caching_and_no_transformers_run(make_suite):
    runs = by_backend(make_suite().offline_runs("W8"))
    a = bench_args(runs["pagoda"].cmd)
    assert (a.num_prompts, a.prefix_len, a.input_len, a.output_len, a.enable_prefix_caching) == (1000, 1000, 128, 128, True)
    assert runs["transformers"].skip and runs["transformers"].cmd == []


def test_w9_long_context_on_the_long_model(make_suite):
    s = make_suite()
    runs = by_backend(s.offline_runs("W9"))
    a, hf = bench_args(runs["pagoda"].cmd), bench_args(runs["transformers"].cmd)
    assert (a.num_prompts, a.input_len, a.output_len) == (32, 16384, 128)
    assert a.model == hf.model == s.long_model != s.model and "llama3.1-8b" in s.long_model
    assert int(a.max_model_len) == 16384 + 128
    assert "--max-model-len" not in runs["transformers"].cmd  # an engine flag: pagoda only
    assert hf.hf_max_batch_size == suite.HF_BATCH["W9"]


def test_w10_parallel_sampling(make_suite):
    runs = by_backend(make_suite().offline_runs("W10"))
    a = bench_args(runs["pagoda"].cmd)
    assert (a.num_prompts, a.input_len, a.output_len, a.n) == (250, 128, 128, 4)
    assert runs["transformers"].skip


@pytest.mark.parametrize("w, prompt", [("W11", 128), ("W12", 2048)])
def test_ttft_workloads(make_suite, w, prompt):
    runs = by_backend(make_suite().latency_runs(w))
    for backend, run in runs.items():
        a = bench_args(run.cmd)
        assert (a.bench_type, a.batch_size, a.input_len, a.output_len) == ("latency", 1, prompt, 1)
        assert "--hf-max-batch-size" not in run.cmd
    assert bench_args(runs["transformers"].cmd).backend == "hf"


def test_backend_selection_and_model_flag(make_suite, tmp_path):
    s = make_suite("--no-hf", "--model", str(tmp_path / "m"))
    runs = s.offline_runs("W9")
    assert [r.backend for r in runs] == ["pagoda"] and bench_args(runs[0].cmd).model == str(tmp_path / "m")
    assert [r.backend for r in make_suite("--no-pagoda").latency_runs("W11")] == ["transformers"]


def test_skipped_run_gives_a_row_and_small_bounds_read_in_ms(make_suite):
    s = make_suite()
    s.execute([r for r in s.offline_runs("W8") if r.skip], describe=None)
    s.add_row("W11", "pagoda", s.latency_runs("W11")[0].cmd, "TTFT avg 7.00 ms", {"speed_of_light_s": 0.0035, "achieved_percent": 50.0})
    rows = open(os.path.join(s.out, "benchmark_rows.md")).read().splitlines()[-2:]
    assert "| W8 | transformers |  | skipped: transformers `generate` has no prefix cache" in rows[0]
    assert "| 3.50 ms | 50.0 % |" in rows[1] and "$MODEL" in rows[1] and "$OUT/W11-pagoda.json" in rows[1]


def test_run_dispatches_every_workload(make_suite, tmp_path, monkeypatch):
    s = make_suite("--model", str(tmp_path / "m"))
    calls = []
    monkeypatch.setattr(suite, "measure_ceilings_subprocess", lambda: [])
    monkeypatch.setattr(s, "offline", lambda w: calls.append(("offline", w)))
    monkeypatch.setattr(s, "latency", lambda w: calls.append(("latency", w)))
    s.run(["W2", "W4", "W7", "W8", "W9", "W10", "W11", "W12"])
    assert calls == [("offline", "W2"), ("latency", "W4"), ("offline", "W7"), ("offline", "W8"), ("offline", "W9"),
                     ("offline", "W10"), ("latency", "W11"), ("latency", "W12")]


def test_serve_rates_flag_parses_and_refuses_bad_values():
    parser = suite.make_parser()
    assert parser.parse_args(["W5", "--serve-rates", "4,inf"]).serve_rates == (4.0, float("inf"))
    assert parser.parse_args(["W5"]).serve_rates == suite.SERVE_RATES
    for bad in ("fast", "0", "4,-1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["W5", "--serve-rates", bad])


def test_parallel_sizes_reach_every_pagoda_run_and_the_server(make_suite):
    """--tensor-parallel-size / --pipeline-parallel-size (issue 22): pagoda's runs and the server get them, the rows
    name them, transformers (one GPU) is skipped with a row saying why."""
    s = make_suite("--tensor-parallel-size", "2", "--pipeline-parallel-size", "2")
    for runs in (s.offline_runs("W2"), s.latency_runs("W4")):
        runs = by_backend(runs)
        a = bench_args(runs["pagoda"].cmd)
        assert (a.tensor_parallel_size, a.pipeline_parallel_size) == (2, 2)
        assert runs["transformers"].skip.startswith("transformers runs on one GPU") and not runs["transformers"].cmd
    server = s.server_cmd()
    assert server[server.index("--tensor-parallel-size") + 1] == "2" and "--pipeline-parallel-size" in server
    s.add_row("W2", "pagoda", s.offline_runs("W2")[0].cmd, "1 req/s", None)
    assert "| W2 tp=2 pp=2 | pagoda |" in open(os.path.join(s.out, "benchmark_rows.md")).read()
    one = make_suite("--tensor-parallel-size", "4")
    assert one.label("W4") == "W4 tp=4" and "--pipeline-parallel-size" not in one.offline_runs("W2")[0].cmd
    plain = make_suite()
    assert plain.label("W4") == "W4" and "--tensor-parallel-size" not in plain.server_cmd()
    assert not by_backend(plain.latency_runs("W4"))["transformers"].skip


def test_shape_flag_builds_the_70b_and_parallel_sizes_are_checked(make_suite, tmp_path, monkeypatch):
    s = make_suite("--shape", "llama3-70b", "--no-hf")
    assert s.model.endswith("llama3-70b-shape")
    built = []
    monkeypatch.setattr("pagoda.benchmarks.make_model.make_model", lambda folder, shape="llama3-8b": built.append(shape))
    monkeypatch.setattr(suite, "measure_ceilings_subprocess", lambda: [])
    monkeypatch.setattr(s, "latency", lambda w: None)
    s.run(["W4"])
    assert built == ["llama3-70b"]
    parser = suite.make_parser()
    for bad in ("0", "two", "-1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["W2", "--tensor-parallel-size", bad])


def test_server_stalls_counts_compiles_and_long_gc_passes_per_process():
    log = "\n".join([
        "INFO 20:34:50.594 pagoda.engine.gc_debug: API server: GC generation 2 pass took 179.2 ms (collected 159, ...)",
        "INFO 20:34:50.600 pagoda.engine.gc_debug: API server: GC generation 0 pass took 0.1 ms (collected 0, ...)",
        "INFO 20:34:51.000 pagoda.engine.gc_debug: API server: GC generation 1 pass took 12.5 ms (collected 3, ...)",
        "INFO 20:36:23.533 [core] pagoda.engine.gc_debug: engine core: GC generation 2 pass took 0.6 ms (...)",
        "WARNING 20:36:24.000 [core] pagoda.worker.compile_watch: Triton compiled a kernel after start-up (or ...",
    ])
    assert suite.server_stalls(log) == ("stalls: 1 runtime compiles, GC passes >= 10 ms: API server 2 (longest 179 ms), "
                                        "engine core 0")
    assert suite.server_stalls("") == "stalls: 0 runtime compiles, GC passes >= 10 ms: API server 0, engine core 0"


def test_serve_prompts_flag(make_suite):
    assert make_suite().serve_prompts(4.0) == 240 and make_suite().serve_prompts(float("inf")) == 1000
    assert make_suite("--serve-prompts", "1000").serve_prompts(4.0) == 1000
