"""`pagoda bench throughput|latency` end to end on a tiny model (CPU): the hf backend and pagoda's."""

import argparse
import json
import os
import shutil

import pytest

from pagoda.benchmarks import hf_backend
from pagoda.benchmarks.make_model import make_model
from pagoda.entrypoints.cli.bench import add_bench_parser, run_bench



def parse(argv):
    parser = argparse.ArgumentParser(prog="pagoda")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def test_engine_flags_reach_the_namespace():
    args = parse(["throughput", "--model", "m", "--max-num-seqs", "7", "--no-enable-prefix-caching",
                  "--random-input-len", "33", "--random-output-len", "5", "--load-format", "dummy"])
    assert (args.max_num_seqs, args.enable_prefix_caching, args.input_len, args.output_len, args.load_format) == (7, False, 33, 5, "dummy")
    from pagoda.benchmarks.common import engine_kwargs
    from pagoda.engine_args import EngineArgs

    kwargs = engine_kwargs(args)
    assert kwargs["max_num_seqs"] == 7 and "num_prompts" not in kwargs
    EngineArgs.from_kwargs(**kwargs)  # every keyword is an engine argument


def test_hf_throughput(tiny_llama, tmp_path, capsys):
    out = tmp_path / "t.json"
    args = parse(["throughput", "--backend", "hf", "--model", tiny_llama, "--num-prompts", "6", "--input-len", "16",
                  "--output-len", "4", "--hf-max-batch-size", "4", "--sol-bandwidth-gbps", "100", "--sol-tflops", "1",
                  "--output-json", str(out)])
    result = run_bench(args)
    text = capsys.readouterr().out
    assert "Throughput: " in text and " requests/s, " in text and " total tokens/s, " in text and " output tokens/s" in text
    assert "Total num prompt tokens:  96" in text and "Total num output tokens:  24" in text
    assert "Speed-of-light: " in text and "; achieved " in text
    saved = json.loads(out.read_text())
    assert saved["total_num_output_tokens"] == 24 and saved["speed_of_light_s"] > 0
    assert result["achieved_percent"] == pytest.approx(100 * saved["speed_of_light_s"] / saved["elapsed_time"])


def test_hf_generate_exact_lengths(tiny_llama):
    model, device = hf_backend.load_model(tiny_llama, "float32", "cpu")
    out = hf_backend.generate_static(model, device, [[5, 6, 7], [8, 9, 10, 11, 12]], max_new_tokens=6)
    assert [len(o) for o in out] == [6, 6]


def test_hf_random_init_from_config_only_folder(tiny_llama, tmp_path):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(os.path.join(tiny_llama, "config.json"), folder / "config.json")
    model, device = hf_backend.load_model(str(folder), "bfloat16", "cpu")
    assert next(model.parameters()).dtype.__str__() == "torch.bfloat16"
    assert [len(o) for o in hf_backend.generate_static(model, device, [[3, 4, 5]], 3)] == [3]


def test_hf_latency(tiny_llama, tmp_path, capsys):
    args = parse(["latency", "--backend", "hf", "--model", tiny_llama, "--batch-size", "2", "--input-len", "8",
                  "--output-len", "4", "--num-iters-warmup", "1", "--num-iters", "3", "--output-json", str(tmp_path / "l.json")])
    result = run_bench(args)
    text = capsys.readouterr().out
    assert "Avg latency: " in text and "99% percentile latency: " in text and "Avg time per output token" in text
    assert "no ceiling known" in text  # CPU without flags
    assert len(result["latencies"]) == 3 and set(result["percentiles"]) == {"10", "25", "50", "75", "90", "99"}


def test_llama3_config_folder(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from pagoda.benchmarks.common import model_shape

    folder = make_model(str(tmp_path / "l3"))
    cfg = AutoConfig.from_pretrained(folder)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.vocab_size) == (4096, 32, 8, 128256)
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == 128256 and tok.decode([5, 6]) == "t5 t6"
    assert model_shape(folder, "auto").params() == 8_030_261_248


def test_text_tokenizer_is_trained_on_real_text(tmp_path):
    """make_model's `text` tokenizer: a byte-level BPE learned from the standard library's sources (words and code
    pieces, not random strings), topped up to the shape's regular ids, BOS / EOS where the config puts them."""
    from transformers import AutoTokenizer

    from pagoda.benchmarks.make_model import write_text_bpe_tokenizer

    folder = str(tmp_path / "text")
    write_text_bpe_tokenizer(folder, vocab_size=3000, bos=2900, eos=2901, max_bytes=400_000)
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == 3000 and (tok.bos_token_id, tok.eos_token_id) == (2900, 2901)
    vocab = tok.get_vocab()
    assert {"Ġreturn", "Ġself", "def"} <= set(vocab)  # learned words, as a real model's vocabulary has
    text = 'def f(x):\n    return {"name": x}  # a comment'
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and len(ids) < len(text) / 2 and max(ids) < 2900


def test_pagoda_throughput(tiny_llama, capsys):
    args = parse(["throughput", "--model", tiny_llama, "--device", "cpu", "--num-prompts", "5", "--input-len", "16",
                  "--output-len", "4", "--n", "2", "--sol-bandwidth-gbps", "100", "--sol-tflops", "1"])
    result = run_bench(args)
    text = capsys.readouterr().out
    assert "Total num output tokens:  40" in text  # 5 prompts × n=2 × 4 tokens, counted from the outputs
    assert result["total_num_prompt_tokens"] == 80 and "Speed-of-light: " in text


def test_pagoda_throughput_structured_outputs(tiny_llama, capsys):
    schema = '{"json": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}'
    args = parse(["throughput", "--model", tiny_llama, "--device", "cpu", "--num-prompts", "3", "--input-len", "8",
                  "--output-len", "12", "--structured-outputs", schema, "--no-sol"])
    result = run_bench(args)
    text = capsys.readouterr().out
    assert "Structured output: first structured request" in text and "a request with a new schema" in text
    assert result["total_num_output_tokens"] == 36  # ignore_eos: EOS repeats once the object is complete


def test_pagoda_latency(tiny_llama, capsys):
    args = parse(["latency", "--model", tiny_llama, "--device", "cpu", "--batch-size", "2", "--input-len", "8",
                  "--output-len", "4", "--num-iters-warmup", "1", "--num-iters", "2"])
    result = run_bench(args)
    assert "Avg latency: " in capsys.readouterr().out and len(result["latencies"]) == 2


def test_pagoda_latency_spec_oracle_accepts_every_draft(tiny_llama, capsys):
    args = parse(["latency", "--model", tiny_llama, "--device", "cpu", "--batch-size", "2", "--input-len", "8",
                  "--output-len", "11", "--num-iters-warmup", "1", "--num-iters", "2", "--spec-oracle",
                  "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}'])
    result = run_bench(args)
    spec = result["spec_decode"]
    # 3 iterations (warm-up included) x 2 requests, each 11 tokens = 1 from the prefill + 1 from a plain
    # decode step (under async scheduling it is scheduled before the first drafts exist) + a verify step of 4
    # accepted drafts + 1, then one of 3 (capped: 11 - 2 - 5 in flight - 1) + 1; the counters cover the
    # measured runs only, not the untimed reference runs
    assert spec["spec_decode_num_draft_tokens"] == spec["spec_decode_num_accepted_tokens"] == 3 * 2 * 7
    assert spec["spec_decode_num_accepted_tokens_per_pos"] == [3 * 2 * 2] * 3 + [3 * 2]
    assert "Speculative decoding (oracle)" in capsys.readouterr().out


def test_spec_oracle_needs_speculative_decoding(tiny_llama):
    args = parse(["latency", "--model", tiny_llama, "--device", "cpu", "--batch-size", "1", "--input-len", "8",
                  "--output-len", "2", "--num-iters-warmup", "1", "--num-iters", "1", "--spec-oracle"])
    with pytest.raises(SystemExit, match="needs speculative decoding"):
        run_bench(args)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from pagoda.tiny_models import make_llava_checkpoint

    return make_llava_checkpoint(str(tmp_path_factory.mktemp("bench_tiny_llava")))


def test_throughput_random_mm_both_backends(tiny_llava, capsys):
    """Chat-shaped requests with random images through both backends: the same prompts (the same prompt
    token counts, image placeholders expanded), exact output lengths."""
    from transformers import AutoConfig

    results = {}
    for backend in ("pagoda", "hf"):
        args = parse(["throughput", "--backend", backend, "--model", tiny_llava, "--device", "cpu", "--dtype",
                      "float32", "--dataset-name", "random-mm", "--random-mm-base-items-per-request", "2",
                      "--random-mm-bucket-config", "{(40, 48, 1): 0.5, (32, 32, 1): 0.5}", "--num-prompts", "3",
                      "--input-len", "8", "--output-len", "4", "--hf-max-batch-size", "2"])
        results[backend] = run_bench(args)
        text = capsys.readouterr().out
        assert "Total num output tokens:  12" in text and results[backend]["num_images"] == 6
        assert "Vision encoder:" not in text  # a GPU figure (CUDA events)
    config = AutoConfig.from_pretrained(tiny_llava)
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    assert results["pagoda"]["total_num_prompt_tokens"] == results["hf"]["total_num_prompt_tokens"]
    assert results["pagoda"]["total_num_prompt_tokens"] > 6 * patches


def test_throughput_random_mm_refuses_what_it_cannot_run(tiny_llava):
    args = parse(["throughput", "--model", tiny_llava, "--dataset-name", "random-mm", "--n", "2"])
    with pytest.raises(SystemExit, match="random-mm supports --n 1"):
        run_bench(args)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_int4_marked_config_folder(tmp_path, method):
    """`make_model --quantization awq|gptq` writes a quantization_config the resolver and the method's config accept
    (for timing the int4 kernels with --load-format dummy)."""
    from transformers import AutoConfig

    from pagoda.model_executor.layers.quantization.registry import get_quantization_config
    from pagoda.model_executor.layers.quantization.resolve import resolve_quantization

    folder = make_model(str(tmp_path / method), tokenizer=False, quantization=method)
    name, quant = resolve_quantization(None, AutoConfig.from_pretrained(folder), folder)
    assert name == method
    config = get_quantization_config(name).from_config(quant)
    assert config.group_size == 128 and config.weight_bits == 4


# ---- the issue-24 workloads: sampling flags (W7), shared prefix (W8), TTFT (W11/W12) ----------------------

SAMPLING_HEAVY = ["--temperature", "0.8", "--top-p", "0.95", "--top-k", "50", "--repetition-penalty", "1.1", "--logprobs", "5"]


def test_pagoda_throughput_sampling_flags(tiny_llama, capsys, monkeypatch):
    """The sampling flags reach every request, the engine returns the logprobs asked for, and the bound is W2's."""
    from pagoda import LLM

    seen = {}
    generate = LLM.generate

    def spy(self, prompts, params, **kwargs):
        outputs = generate(self, prompts, params, **kwargs)
        seen["params"], seen["outputs"] = params, outputs
        return outputs

    monkeypatch.setattr(LLM, "generate", spy)
    shape = ["throughput", "--model", tiny_llama, "--device", "cpu", "--num-prompts", "3", "--input-len", "8",
             "--output-len", "4", "--sol-bandwidth-gbps", "100", "--sol-tflops", "1"]
    result = run_bench(parse([*shape, *SAMPLING_HEAVY]))
    assert result["sampling"] == {"temperature": 0.8, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1, "logprobs": 5}
    p = seen["params"][0]
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.logprobs, p.ignore_eos) == (0.8, 0.95, 50, 1.1, 5, True)
    completion = seen["outputs"][0].outputs[0]
    assert len(completion.logprobs) == 4 and all(len(pos) >= 5 for pos in completion.logprobs)
    assert result["total_num_output_tokens"] == 12
    from pagoda.benchmarks import speed_of_light as sol
    from pagoda.benchmarks.common import model_shape

    # the same bound as without the flags (sampling is left out of the model)
    work = sol.workload_from_lengths([8] * 3, [4] * 3)
    expected = sol.speed_of_light(model_shape(tiny_llama, None), work, sol.Ceilings(100e9, 1e12), 3 * 12).time_s
    assert result["speed_of_light_s"] == pytest.approx(expected)
    capsys.readouterr()


def test_default_sampling_is_unchanged(tiny_llama, monkeypatch):
    """Without sampling flags pagoda samples at temperature 1.0, top-p 1.0 as before (W1-W3 rows stay comparable)."""
    from pagoda import LLM

    seen = {}
    monkeypatch.setattr(LLM, "generate", lambda self, prompts, params, **kw: seen.setdefault("params", params) and [])
    run_bench(parse(["throughput", "--model", tiny_llama, "--device", "cpu", "--num-prompts", "2", "--input-len", "8",
                     "--output-len", "2", "--no-sol"]))
    p = seen["params"][0]
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.logprobs) == (1.0, 1.0, -1, 1.0, None)


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "-1", "temperature must be >= 0"),
    ("--top-p", "0", "top_p must be in \\(0, 1\\]"),
    ("--top-p", "1.5", "top_p must be in \\(0, 1\\]"),
    ("--top-k", "0", "top_k must be -1"),
    ("--repetition-penalty", "0", "repetition_penalty must be a finite number > 0"),
    ("--logprobs", "-1", "--logprobs must be >= 0"),
    ("--logprobs", "21", "more than --max-logprobs 20"),
])
def test_throughput_refuses_bad_sampling_flags(flag, value, message):
    # refused before the model is looked at: "no-such-model" is never opened
    for backend in ("pagoda", "hf"):
        with pytest.raises(SystemExit, match=message):
            run_bench(parse(["throughput", "--backend", backend, "--model", "no-such-model", flag, value]))


def test_hf_sampling_flags(tiny_llama, monkeypatch):
    calls = []
    monkeypatch.setattr(hf_backend.TopLogprobs, "__call__",
                        lambda self, ids, scores: calls.append((self.k, scores.shape[0])) or scores)
    model, device = hf_backend.load_model(tiny_llama, "float32", "cpu")
    sampling = {"temperature": 0.8, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1, "logprobs": 5}
    kwargs = hf_backend.generation_kwargs(sampling)
    assert (kwargs["do_sample"], kwargs["temperature"], kwargs["top_p"], kwargs["top_k"], kwargs["repetition_penalty"]) == \
        (True, 0.8, 0.95, 50, 1.1)
    assert hf_backend.generation_kwargs(None)["do_sample"] is False
    assert hf_backend.generation_kwargs({"temperature": 0.8})["top_k"] == 0  # off, not transformers' default of 50
    out = hf_backend.generate_static(model, device, [[5, 6, 7], [8, 9, 10, 11]], 3, sampling)
    assert [len(o) for o in out] == [3, 3]
    assert calls == [(5, 2)] * 3  # every step's logprobs, for the whole batch


def test_pagoda_throughput_shared_prefix_bound(tiny_llama, capsys):
    args = parse(["throughput", "--model", tiny_llama, "--device", "cpu", "--num-prompts", "4", "--input-len", "8",
                  "--output-len", "3", "--prefix-len", "40", "--enable-prefix-caching", "--sol-bandwidth-gbps", "100",
                  "--sol-tflops", "1"])
    result = run_bench(args)
    text = capsys.readouterr().out
    assert result["total_num_prompt_tokens"] == 4 * 48 and result["shared_prefix_tokens"] == 40
    assert "shared prefix read by every request (no cascade attention)" in text
    from pagoda.benchmarks import speed_of_light as sol
    from pagoda.benchmarks.common import model_shape

    shape, c = model_shape(tiny_llama, None), sol.Ceilings(100e9, 1e12)
    recompute = sol.speed_of_light(shape, sol.workload_from_lengths([48] * 4, [3] * 4), c, 4 * 51).time_s
    assert result["speed_of_light_s"] < result["speed_of_light_prefix_per_request_s"] < recompute


@pytest.mark.parametrize("prompt", [16, 64])
def test_hf_latency_ttft_bound_is_one_prefill(tiny_llama, prompt):
    """Suite W11/W12's form (batch 1, one output token): the bound is one prefill step."""
    from pagoda.benchmarks import speed_of_light as sol
    from pagoda.benchmarks.common import model_shape

    result = run_bench(parse(["latency", "--backend", "hf", "--model", tiny_llama, "--batch-size", "1", "--input-len",
                              str(prompt), "--output-len", "1", "--num-iters-warmup", "1", "--num-iters", "2",
                              "--sol-bandwidth-gbps", "100", "--sol-tflops", "1"]))
    step = sol.step_cost(model_shape(tiny_llama, None), [sol.Chunk(prompt, 0)], sol.Ceilings(100e9, 1e12))
    assert result["speed_of_light_s"] == pytest.approx(step) and result["sol_steps"] == 1


def test_llama31_long_context_folder(tmp_path):
    from transformers import AutoConfig

    from pagoda.benchmarks.common import model_shape
    from pagoda.engine_args import EngineArgs

    folder = make_model(str(tmp_path / "l31"), "llama3.1-8b", tokenizer=False)
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.max_position_embeddings == 131072 and cfg.rope_parameters["rope_type"] == "llama3"
    assert model_shape(folder, "auto").params() == 8_030_261_248
    config = EngineArgs(model=folder, max_model_len=16512, load_format="dummy", device="cpu").create_config()
    assert config.model.max_model_len == 16512


def test_speed_of_light_of_a_parallel_run_scales_one_gpus_ceilings(tmp_path, capsys):
    """--tensor-parallel-size 2 --pipeline-parallel-size 2: the bound is on four GPUs' ceilings (two for a latency
    run, whose stages take turns), said in its own line and in the JSON."""
    import argparse

    from pagoda.benchmarks import common
    from pagoda.benchmarks import speed_of_light as sol

    folder = make_model(str(tmp_path / "l3"), tokenizer=False)
    work = sol.workload_from_lengths([512] * 8, [64] * 8)

    def bound(tp, pp, **kwargs):
        args = argparse.Namespace(no_sol=False, sol_bandwidth_gbps=1000.0, sol_tflops=100.0, sol_memory_gb=80.0,
                                  dtype="bfloat16", kv_cache_dtype="auto", gpu_memory_utilization=0.9,
                                  tensor_parallel_size=tp, pipeline_parallel_size=pp)
        return common.run_sol(args, folder, work, 10.0, **kwargs)

    one, four, turns = bound(1, 1), bound(2, 2), bound(2, 2, stages_overlap=False)
    assert "speed-of-light on 4 GPUs (tensor 2 x pipeline 2)" in capsys.readouterr().out
    assert (one["sol_gpus"], four["sol_gpus"], turns["sol_gpus"]) == (1, 4, 4)
    assert (four["bandwidth_gbps"], turns["bandwidth_gbps"], four["sol_bandwidth_gbps_per_gpu"]) == (4000, 2000, 1000)
    assert four["kv_capacity_tokens"] > 4 * one["kv_capacity_tokens"]  # the weights are held once over four GPUs
    assert one["speed_of_light_s"] > turns["speed_of_light_s"] > four["speed_of_light_s"]
