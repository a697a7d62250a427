"""compressed-tensors end to end: `LLM(folder, dtype="float32")` on tiny llm-compressor-layout checkpoints
(pagoda.tiny_compressed_tensors; Llama and Qwen2 shapes) gives the greedy tokens and logprobs of transformers' fp32
model with the dequantized weights and, for W8A8, fake-quantized linear inputs (compressed_tensors_reference.py):
W4A16 per group of 32 and per channel, symmetric and asymmetric, W8A16; FP8 with per-tensor and per-channel weight
scales, dynamic and static activations; int8 W8A8 dynamic and static. Wrong references (another packing order, two
fused pieces swapped) must disagree."""

from __future__ import annotations

import pytest

from awq_reference import compare, pagoda_greedy
from compressed_tensors_reference import ct_checkpoint, reference_model
from pagoda import LLM, SamplingParams
from pagoda.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from pagoda.model_executor.layers.quantization.compressed_tensors_int8 import Int8W8A8LinearMethod
from pagoda.model_executor.layers.quantization.compressed_tensors_wna16 import WNA16LinearMethod
from pagoda.model_executor.layers.quantization.fp8 import Fp8LinearMethod

MAX_TOKENS = 16
EXACT_TOL = 1e-4  # weight-only: fp32 on both sides, the same weights; only summation order differs
# W8A8: an activation may land on opposite sides of a rounding step on the two sides (fp32 rounding differs), then
# that product moves by a whole step; everywhere else they agree to ~1e-6 (as tests/quantization/test_fp8_models.py)
W8A8_TOL, W8A8_MAX_OFF = 1e-3, 3
WNA16 = [
    ("LlamaForCausalLM", dict(scheme="W4A16", group_size=32, symmetric=True)),
    ("Qwen2ForCausalLM", dict(scheme="W4A16", group_size=32, symmetric=False)),
    ("Qwen2ForCausalLM", dict(scheme="W4A16", group_size=None, symmetric=True)),
    ("LlamaForCausalLM", dict(scheme="W4A16", group_size=None, symmetric=False)),
    ("LlamaForCausalLM", dict(scheme="W8A16", group_size=32, symmetric=False)),
]
W8A8 = [
    ("LlamaForCausalLM", dict(scheme="FP8", weight_strategy="channel", activations="dynamic")),
    ("Qwen2ForCausalLM", dict(scheme="FP8", weight_strategy="tensor", activations="dynamic")),
    ("Qwen2ForCausalLM", dict(scheme="FP8", weight_strategy="channel", activations="static")),
    ("LlamaForCausalLM", dict(scheme="FP8", weight_strategy="tensor", activations="static")),
    ("LlamaForCausalLM", dict(scheme="W8A8", weight_strategy="channel", activations="dynamic")),
    ("Qwen2ForCausalLM", dict(scheme="W8A8", weight_strategy="tensor", activations="static")),
]
SWAPS = (("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"),
         ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"))


def ids(cases):
    return [f"{arch[:5]}-" + "-".join(str(v) for v in kwargs.values()) for arch, kwargs in cases]


@pytest.fixture(scope="module")
def ct(tmp_path_factory, tok_dir):
    return lambda arch="LlamaForCausalLM", **kwargs: ct_checkpoint(tmp_path_factory, tok_dir, arch, **kwargs)


def linear_layers(llm) -> dict:
    model = llm.llm_engine.core.executor.worker.model
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearBase)}


@pytest.mark.parametrize("arch, kwargs", WNA16, ids=ids(WNA16))
def test_pack_quantized_matches_dequantized_reference(arch, kwargs, ct, prompt_ids):
    folder = ct(arch, **kwargs)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS)
    assert llm.model_config.quantization == "compressed-tensors"  # detected from config.json
    assert all(isinstance(m.linear_method, WNA16LinearMethod) for m in linear_layers(llm).values())
    assert compare(reference_model(folder), prompt_ids, ours, EXACT_TOL) == (0, 0)
    if kwargs["group_size"] == 32 and kwargs["scheme"] == "W4A16":
        wrong = [reference_model(folder, order=(0, 2, 4, 6, 1, 3, 5, 7))]  # AWQ's order, not compressed-tensors'
        wrong += [reference_model(folder, swap=swap) for swap in SWAPS]
        for reference in wrong:
            _, off = compare(reference, prompt_ids, ours, EXACT_TOL)
            assert off > len(prompt_ids) * MAX_TOKENS // 2, off


@pytest.mark.parametrize("arch, kwargs", W8A8, ids=ids(W8A8))
def test_w8a8_matches_fake_quantized_reference(arch, kwargs, ct, prompt_ids):
    folder = ct(arch, **kwargs)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS)
    method = Fp8LinearMethod if kwargs["scheme"] == "FP8" else Int8W8A8LinearMethod
    assert all(isinstance(m.linear_method, method) for m in linear_layers(llm).values())
    wrong_tokens, off = compare(reference_model(folder), prompt_ids, ours, W8A8_TOL)
    assert wrong_tokens == 0 and off <= W8A8_MAX_OFF, (wrong_tokens, off)
    if kwargs["weight_strategy"] == "channel" and kwargs["activations"] == "dynamic":
        _, off = compare(reference_model(folder, swap=SWAPS[0]), prompt_ids, ours, W8A8_TOL)
        assert off > len(prompt_ids) * MAX_TOKENS // 2, off


def test_ignored_layers_stay_float(ct, prompt_ids):
    ignore = ("re:.*layers\\.0\\.self_attn\\.[qkv]_proj$", "model.layers.1.mlp.down_proj")
    folder = ct("Qwen2ForCausalLM", scheme="W4A16", group_size=32, symmetric=False, ignore=ignore)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS)
    layers = linear_layers(llm)
    plain = {name for name, m in layers.items() if isinstance(m.linear_method, UnquantizedLinearMethod)}
    assert plain == {"model.layers.0.self_attn.qkv_proj", "model.layers.1.mlp.down_proj"}
    assert compare(reference_model(folder), prompt_ids, ours, EXACT_TOL) == (0, 0)


def test_float16_activations(ct, prompt_ids):
    folder = ct("LlamaForCausalLM", scheme="W4A16", group_size=32, symmetric=True)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS, dtype="float16")
    assert linear_layers(llm)["model.layers.0.mlp.down_proj"].weight_scale.dtype.is_floating_point
    wrong_tokens, off = compare(reference_model(folder), prompt_ids, ours, 0.1)
    assert wrong_tokens <= 2 and off <= 2, (wrong_tokens, off)


@pytest.mark.parametrize("kwargs", [dict(scheme="W4A16", group_size=32, symmetric=False),
                                    dict(scheme="W8A8", weight_strategy="channel", activations="static")])
def test_dummy_weights(kwargs, ct, prompt_ids):
    llm = LLM(ct("LlamaForCausalLM", **kwargs), dtype="float32", load_format="dummy", max_model_len=64)
    out = llm.generate([{"prompt_token_ids": prompt_ids[0]}], SamplingParams(temperature=0, max_tokens=4, logprobs=0),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 4 and all(abs(lp[t].logprob) < 1e9 for lp, t in zip(out.logprobs, out.token_ids))
