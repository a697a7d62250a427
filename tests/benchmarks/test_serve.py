"""The serving benchmark: metrics by hand, then a real run against a fake streaming server."""

import argparse
import glob
import json

import pytest

from pagoda.benchmarks.serve import arrival_delays
from pagoda.benchmarks.serve_metrics import RequestResult, calculate_metrics, format_result_block
from pagoda.entrypoints.cli.bench import add_bench_parser, run_bench

from .fake_openai_server import FakeServer


def parse(argv):
    parser = argparse.ArgumentParser(prog="pagoda")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def test_metrics_by_hand():
    results = [
        RequestResult(success=True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1, 0.1, 0.1, 0.1]),
        RequestResult(success=True, prompt_len=20, output_tokens=3, ttft=0.3, latency=0.7, itl=[0.2, 0.2]),
        RequestResult(success=True, prompt_len=30, output_tokens=1, ttft=0.2, latency=0.2, itl=[]),
        RequestResult(success=False, prompt_len=40, error="boom"),
    ]
    m = calculate_metrics(results, duration_s=2.0, percentiles=(50, 99))
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["total_input_tokens"] == 60 and m["total_output_tokens"] == 9
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(4.5)
    assert m["total_token_throughput"] == pytest.approx(34.5)
    assert m["mean_ttft_ms"] == pytest.approx(200.0)
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    # TPOT: (0.5−0.1)/4 = 0.1 and (0.7−0.3)/2 = 0.2; the 1-token request has none
    assert m["mean_tpot_ms"] == pytest.approx(150.0)
    assert m["mean_itl_ms"] == pytest.approx(1000 * (0.4 + 0.4) / 6)
    assert m["p99_e2el_ms"] == pytest.approx(1000 * (0.5 + 0.98 * (0.7 - 0.5)))  # numpy: index 0.99·2 = 1.98
    block = format_result_block(m, (50, 99))
    assert block.splitlines()[0] == "============ Serving Benchmark Result ============"
    for label in ("Successful requests:", "Benchmark duration (s):", "Total input tokens:", "Total generated tokens:",
                  "Request throughput (req/s):", "Output token throughput (tok/s):", "Total Token throughput (tok/s):",
                  "Mean TTFT (ms):", "Median TPOT (ms):", "P99 ITL (ms):", "P50 E2EL (ms):", "Failed requests:"):
        assert label in block


def test_arrivals_poisson_rate():
    d = arrival_delays(20000, rate=4.0, burstiness=1.0, seed=0)
    assert d.mean() == pytest.approx(0.25, rel=0.05)
    assert d.std() == pytest.approx(0.25, rel=0.05)  # exponential: std = mean
    steady = arrival_delays(20000, rate=4.0, burstiness=4.0, seed=0)
    assert steady.mean() == pytest.approx(0.25, rel=0.05) and steady.std() < 0.6 * d.std()
    assert not arrival_delays(5, float("inf"), 1.0, 0).any()


def test_serve_against_fake_server(tmp_path, capsys):
    with FakeServer(first_delay=0.2, token_delay=0.05) as server:
        args = parse(["serve", "--base-url", server.url, "--vocab-size", "1000", "--num-prompts", "8", "--input-len", "12",
                      "--output-len", "5", "--ignore-eos", "--save-result", "--result-dir", str(tmp_path), "--metric-percentiles", "50,99"])
        result = run_bench(args)
    out = capsys.readouterr().out
    assert "============ Serving Benchmark Result ============" in out
    m = result["points"][0]["metrics"]
    assert m["completed"] == 8 and m["failed"] == 0
    assert m["total_input_tokens"] == 96 and m["total_output_tokens"] == 40
    assert 180 < m["median_ttft_ms"] < 600
    assert 40 < m["median_itl_ms"] < 150 and 40 < m["median_tpot_ms"] < 150
    assert m["median_e2el_ms"] == pytest.approx(m["median_ttft_ms"] + 4 * m["median_tpot_ms"], rel=0.2)
    bodies = server.bodies[1:]  # the first is the initial test request
    assert len(bodies) == 8 and all(b["ignore_eos"] and b["stream"] and b["model"] == "fake-model" for b in bodies)
    assert all(len(b["prompt"]) == 12 and all(isinstance(t, int) for t in b["prompt"]) for b in bodies)
    assert len({tuple(b["prompt"]) for b in bodies}) == 8
    saved = json.load(open(glob.glob(str(tmp_path / "serve-*.json"))[0]))
    assert saved["points"][0]["metrics"]["completed"] == 8


def test_max_concurrency_and_sweep_plot(tmp_path):
    with FakeServer(first_delay=0.02, token_delay=0.01, send_usage=False) as server:
        args = parse(["serve", "--base-url", server.url, "--vocab-size", "500", "--num-prompts", "6", "--input-len", "4",
                      "--output-len", "3", "--sweep", "max-concurrency=1,3", "--result-dir", str(tmp_path), "--disable-tqdm",
                      "--skip-initial-test"])
        result = run_bench(args)
        assert server.max_in_flight == 3
    points = result["points"]
    assert [p["max_concurrency"] for p in points] == [1, 3]
    assert all(p["metrics"]["total_output_tokens"] == 18 for p in points)  # counted from chunks without usage
    assert points[0]["metrics"]["duration"] > points[1]["metrics"]["duration"]
    png = result["plot"]
    assert png.endswith(".png") and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_request_rate_spreads_arrivals():
    with FakeServer(first_delay=0.0, token_delay=0.0) as server:
        args = parse(["serve", "--base-url", server.url, "--vocab-size", "500", "--num-prompts", "10", "--input-len", "4",
                      "--output-len", "2", "--request-rate", "20", "--disable-tqdm", "--skip-initial-test"])
        m = run_bench(args)["points"][0]["metrics"]
    # 9 gaps of mean 50 ms: the run lasts on the order of half a second, not milliseconds
    assert m["duration"] > 0.15 and m["completed"] == 10


def test_random_mm_sends_the_seed_chat_shape_with_images(tmp_path, tiny_llama):
    import base64
    import io

    from PIL import Image

    with FakeServer(first_delay=0.01, token_delay=0.01) as server:
        args = parse(["serve", "--base-url", server.url, "--tokenizer", tiny_llama, "--endpoint",
                      "/v1/chat/completions", "--dataset-name", "random-mm", "--random-mm-base-items-per-request", "2",
                      "--random-mm-bucket-config", "{(48, 40, 1): 0.5, (32, 32, 1): 0.5}", "--num-prompts", "4",
                      "--input-len", "8", "--output-len", "3"])
        result = run_bench(args)
    assert result["points"][0]["metrics"]["completed"] == 4
    for body in server.bodies[1:]:
        text, *images = body["messages"][0]["content"]
        assert text["type"] == "text" and [part["type"] for part in images] == ["image_url", "image_url"]
        for part in images:
            header, data = part["image_url"]["url"].split(",", 1)
            assert header == "data:image/jpeg;base64"
            assert Image.open(io.BytesIO(base64.b64decode(data))).size in ((40, 48), (32, 32))
    with pytest.raises(SystemExit, match="--random-mm-base-items-per-request needs --dataset-name random-mm"):
        run_bench(parse(["serve", "--base-url", "http://127.0.0.1:9", "--model", "m", "--vocab-size", "100",
                         "--random-mm-base-items-per-request", "2", "--num-prompts", "1", "--skip-initial-test"]))
    with pytest.raises(SystemExit, match="use --endpoint /v1/chat/completions"):
        run_bench(parse(["serve", "--base-url", "http://127.0.0.1:9", "--model", "m", "--vocab-size", "100",
                         "--dataset-name", "random-mm", "--num-prompts", "1", "--skip-initial-test"]))


def test_make_model_writes_a_llava_shape_with_its_processor(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    from pagoda.benchmarks.make_model import make_model

    folder = make_model(str(tmp_path / "llava"), "llava-1.5-7b")
    config = AutoConfig.from_pretrained(folder)
    assert config.architectures == ["LlavaForConditionalGeneration"] and config.text_config.vocab_size == 32064
    processor = AutoProcessor.from_pretrained(folder)
    text = processor.tokenizer.apply_chat_template([{"role": "user", "content": processor.image_token + "\nhi"}],
                                                   tokenize=False, add_generation_prompt=True)
    out = processor(text=text, images=[Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8))], return_tensors="pt")
    assert int((out["input_ids"] == 32000).sum()) == 576 and tuple(out["pixel_values"].shape) == (1, 3, 336, 336)
