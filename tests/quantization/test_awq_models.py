"""AWQ end to end: `LLM(folder, dtype="float32")` on tiny AWQ checkpoints (make_awq_checkpoint: Llama and Qwen2
shapes, group sizes 32 and 64, config.json or AutoAWQ's quant_config.json) gives the greedy tokens and logprobs
of transformers' fp32 model with the dequantized weights (awq_reference.py). References with two fused pieces
swapped (k / v, gate / up) must disagree: the comparison notices a piece at the wrong packed offset. Layers in
modules_to_not_convert stay float layers; float16 runs too."""

from __future__ import annotations

import pytest
import torch

from awq_reference import awq_checkpoint, compare, pagoda_greedy, reference_model
from pagoda import LLM, SamplingParams
from pagoda.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from pagoda.model_executor.layers.quantization.awq import AwqLinearMethod

MAX_TOKENS = 16
LOGPROB_TOL = 1e-4  # fp32 on both sides, the same weights: only the matmuls' summation order differs


@pytest.fixture(scope="module")
def awq(tmp_path_factory, tok_dir):
    return lambda arch="LlamaForCausalLM", **kwargs: awq_checkpoint(tmp_path_factory, tok_dir, arch, **kwargs)


def linear_layers(llm) -> dict:
    model = llm.llm_engine.core.executor.worker.model  # the loaded model
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearBase)}


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
@pytest.mark.parametrize("group_size", [32, 64])
def test_awq_checkpoint_matches_dequantized_reference(arch, group_size, awq, prompt_ids):
    folder = awq(arch, group_size=group_size)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS)
    assert llm.model_config.quantization == "awq"  # detected from config.json
    assert compare(reference_model(folder), prompt_ids, ours, LOGPROB_TOL) == (0, 0)
    if group_size == 32:
        for swap in (("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"),
                     ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")):
            _, off = compare(reference_model(folder, swap=swap), prompt_ids, ours, LOGPROB_TOL)
            assert off > len(prompt_ids) * MAX_TOKENS // 2, (swap, off)


def test_autoawq_quant_config_json_and_whole_input_groups(awq, prompt_ids):
    folder = awq("LlamaForCausalLM", group_size=-1, config_file="quant_config.json")
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS, quantization="awq")
    assert llm.model_config.quantization == "awq"
    assert compare(reference_model(folder), prompt_ids, ours, LOGPROB_TOL) == (0, 0)


def test_modules_to_not_convert_stay_float_layers(awq, prompt_ids):
    skip = ("layers.0.self_attn", "layers.1.mlp.down_proj")  # substrings, AWQ's rule
    folder = awq("Qwen2ForCausalLM", group_size=32, modules_to_not_convert=skip)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS)
    layers = linear_layers(llm)
    plain = {name for name, m in layers.items() if isinstance(m.linear_method, UnquantizedLinearMethod)}
    assert plain == {"model.layers.0.self_attn.qkv_proj", "model.layers.0.self_attn.o_proj",
                     "model.layers.1.mlp.down_proj"}
    assert all(isinstance(layers[n].linear_method, AwqLinearMethod) and not hasattr(layers[n], "weight")
               for n in set(layers) - plain)
    assert layers["model.layers.0.self_attn.qkv_proj"].weight.dtype == torch.float32
    assert compare(reference_model(folder), prompt_ids, ours, LOGPROB_TOL) == (0, 0)


def test_float16(awq, prompt_ids):
    folder = awq("LlamaForCausalLM", group_size=32)
    llm, ours = pagoda_greedy(folder, prompt_ids, MAX_TOKENS, dtype="float16")
    assert linear_layers(llm)["model.layers.0.mlp.down_proj"].scales.dtype == torch.float16
    # fp16 activations round where the fp32 reference does not: a near tie may flip; a wrong layer is far off
    wrong_tokens, off = compare(reference_model(folder), prompt_ids, ours, 0.1)
    assert wrong_tokens <= 2 and off <= 2, (wrong_tokens, off)


def test_dummy_weights_for_an_awq_checkpoint(awq, prompt_ids):
    llm = LLM(awq("LlamaForCausalLM", group_size=64), dtype="float32", load_format="dummy", max_model_len=64)
    out = llm.generate([{"prompt_token_ids": prompt_ids[0]}], SamplingParams(temperature=0, max_tokens=4,
                                                                            logprobs=0), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4
    assert all(torch.isfinite(torch.tensor(lp[t].logprob)) for lp, t in zip(out.outputs[0].logprobs,
                                                                            out.outputs[0].token_ids))


def test_dummy_weights_are_deterministic_for_packed_layers(awq):
    """Packed integer parameters get zeros under load_format="dummy" (torch.empty before: any bits)."""
    llm = LLM(awq("LlamaForCausalLM", group_size=64), dtype="float32", load_format="dummy", max_model_len=64)
    model = llm.llm_engine.core.executor.worker.model
    packed = [p for name, p in model.named_parameters() if name.endswith(("qweight", "qzeros"))]
    assert packed and all(int(p.abs().sum()) == 0 for p in packed)
