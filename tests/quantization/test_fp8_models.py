"""FP8 end to end: `LLM(folder, dtype="float32")` on tiny FP8 checkpoints (Llama and Qwen2 shapes; per-tensor
and per-channel weight scales; dynamic and static activations) and `quantization="fp8"` on float ones gives
the greedy tokens of a float reference (fp8_reference.py: transformers' model with the dequantized weights,
its linear inputs fake-quantized), with the same logprobs. A reference with two layers' scales swapped
must disagree: the comparison notices a scale on the wrong shard."""

from __future__ import annotations

import pytest
import torch

from fp8_reference import reference_model
from pagoda import LLM, SamplingParams

MAX_TOKENS = 16
# A logprob may differ where the two sides' fp32 rounding puts one activation on opposite sides of an FP8
# rounding step (then the product moves by a full step); everywhere else they agree to ~1e-6.
LOGPROB_TOL, MAX_OFF = 1e-3, 2


def pagoda_greedy(folder: str, prompt_ids, **kwargs):
    llm = LLM(folder, dtype="float32", **kwargs)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=0)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    return llm, [(list(o.outputs[0].token_ids), [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs,
                                                                              o.outputs[0].token_ids)]) for o in outs]


def compare(reference, prompt_ids, ours) -> tuple[int, int]:
    """(positions whose greedy token differs, positions whose logprob differs by more than LOGPROB_TOL)."""
    wrong_tokens = off = 0
    with torch.no_grad():
        for ids, (tokens, logprobs) in zip(prompt_ids, ours):
            logits = reference(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1]
            ref = torch.log_softmax(logits.float(), -1)
            wrong_tokens += sum(int(ref[j].argmax()) != t for j, t in enumerate(tokens))
            off += sum(abs(float(ref[j, t]) - lp) > LOGPROB_TOL for j, (t, lp) in enumerate(zip(tokens, logprobs)))
    return wrong_tokens, off


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
@pytest.mark.parametrize("weight_scales", ["tensor", "channel"])
@pytest.mark.parametrize("activation_scheme", ["dynamic", "static"])
def test_fp8_checkpoint_matches_dequantized_reference(arch, weight_scales, activation_scheme, fp8_checkpoint,
                                                      prompt_ids):
    folder = fp8_checkpoint(arch, weight_scales=weight_scales, activation_scheme=activation_scheme)
    llm, ours = pagoda_greedy(folder, prompt_ids)
    assert llm.model_config.quantization == "fp8"  # detected from config.json
    wrong_tokens, off = compare(reference_model(folder), prompt_ids, ours)
    assert wrong_tokens == 0 and off <= MAX_OFF, (wrong_tokens, off)
    if (arch, weight_scales) == ("LlamaForCausalLM", "channel"):
        for swap in (("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"),
                     ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")):
            _, off = compare(reference_model(folder, swap_scales=swap), prompt_ids, ours)
            assert off > len(prompt_ids) * MAX_TOKENS // 2, (swap, off)


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_quantization_fp8_on_a_float_checkpoint(arch, float_checkpoint, prompt_ids):
    folder = float_checkpoint(arch)
    _, ours = pagoda_greedy(folder, prompt_ids, quantization="fp8")
    wrong_tokens, off = compare(reference_model(folder, online=True), prompt_ids, ours)
    assert wrong_tokens == 0 and off <= MAX_OFF, (wrong_tokens, off)


def test_skipped_layers_stay_unquantized_end_to_end(fp8_checkpoint, prompt_ids):
    ignored = ("model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj", "model.layers.1.mlp.gate_proj",
               "model.layers.1.mlp.up_proj")
    folder = fp8_checkpoint("LlamaForCausalLM", weight_scales="channel", ignored_layers=ignored,
                            ignore_key="modules_to_not_convert")
    _, ours = pagoda_greedy(folder, prompt_ids)
    wrong_tokens, off = compare(reference_model(folder), prompt_ids, ours)
    assert wrong_tokens == 0 and off <= MAX_OFF, (wrong_tokens, off)


def test_dummy_weights_for_an_fp8_checkpoint(fp8_checkpoint, prompt_ids):
    folder = fp8_checkpoint("LlamaForCausalLM", weight_scales="channel", activation_scheme="static")
    llm = LLM(folder, dtype="float32", load_format="dummy", max_model_len=64)
    out = llm.generate([{"prompt_token_ids": prompt_ids[0]}], SamplingParams(temperature=0, max_tokens=4,
                                                                            logprobs=0), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4
    assert all(torch.isfinite(torch.tensor(lp[t].logprob)) for lp, t in zip(out.outputs[0].logprobs,
                                                                            out.outputs[0].token_ids))
