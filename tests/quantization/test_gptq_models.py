"""GPTQ end to end: `LLM(folder, dtype="float32")` on tiny GPTQ checkpoints (make_gptq_checkpoint: Llama and Qwen2
shapes; 4 and 8 bits; groups of 32 and -1; symmetric and asymmetric; desc_act with a random g_idx; v1 and v2
zeros; config.json or quantize_config.json) gives the greedy tokens and logprobs of transformers' fp32 model with
the dequantized weights (gptq_reference.py). References with fused pieces swapped must disagree."""

from __future__ import annotations

import pytest

from awq_reference import compare, pagoda_greedy
from gptq_reference import gptq_checkpoint, reference_model
from pagoda.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from pagoda.model_executor.layers.quantization.gptq import GptqLinearMethod

MAX_TOKENS = 16
LOGPROB_TOL = 1e-4  # fp32 on both sides, the same weights: only the matmuls' summation order differs
CASES = [
    ("LlamaForCausalLM", dict(bits=4, group_size=32, sym=True, desc_act=False)),
    ("Qwen2ForCausalLM", dict(bits=4, group_size=32, sym=False, desc_act=True)),
    ("LlamaForCausalLM", dict(bits=8, group_size=-1, sym=False, desc_act=False)),
    ("Qwen2ForCausalLM", dict(bits=8, group_size=32, sym=True, desc_act=True)),
    ("LlamaForCausalLM", dict(bits=4, group_size=32, sym=False, desc_act=True, checkpoint_format="gptq_v2")),
]


@pytest.fixture(scope="module")
def gptq(tmp_path_factory, tok_dir):
    return lambda arch="LlamaForCausalLM", **kwargs: gptq_checkpoint(tmp_path_factory, tok_dir, arch, **kwargs)


def linear_layers(llm) -> dict:
    model = llm.llm_engine.core.executor.worker.model
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearBase)}


@pytest.mark.parametrize("arch, kwargs", CASES, ids=[f"{a[:5]}-{sorted(k.items())}" for a, k in CASES])
def test_gptq_checkpoint_matches_dequantized_reference(arch, kwargs, gptq, prompt_ids):
    folder = gptq(arch, **kwargs)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS)
    assert llm.model_config.quantization == "gptq"  # detected from config.json
    assert compare(reference_model(folder), prompt_ids, ours, LOGPROB_TOL) == (0, 0)
    if arch == "Qwen2ForCausalLM" and kwargs["bits"] == 4:
        for swap in (("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"),
                     ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")):
            _, off = compare(reference_model(folder, swap=swap), prompt_ids, ours, LOGPROB_TOL)
            assert off > len(prompt_ids) * MAX_TOKENS // 2, (swap, off)


def test_quantize_config_json_desc_act_whole_input(gptq, prompt_ids):
    folder = gptq("LlamaForCausalLM", bits=4, group_size=-1, desc_act=True, sym=True, config_file="quantize_config.json")
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS, quantization="gptq")
    assert llm.model_config.quantization == "gptq"
    assert compare(reference_model(folder), prompt_ids, ours, LOGPROB_TOL) == (0, 0)


def test_modules_to_not_convert_stay_float_layers(gptq, prompt_ids):
    folder = gptq("Qwen2ForCausalLM", bits=4, group_size=32, modules_to_not_convert=("layers.0.self_attn",))
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS)
    layers = linear_layers(llm)
    plain = {name for name, m in layers.items() if isinstance(m.linear_method, UnquantizedLinearMethod)}
    assert plain == {"model.layers.0.self_attn.qkv_proj", "model.layers.0.self_attn.o_proj"}
    assert all(isinstance(layers[n].linear_method, GptqLinearMethod) for n in set(layers) - plain)
    assert compare(reference_model(folder), prompt_ids, ours, LOGPROB_TOL) == (0, 0)
