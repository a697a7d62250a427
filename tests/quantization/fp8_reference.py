"""The float reference of an FP8 model: transformers' model with the dequantized weights, whose nn.Linear
inputs are fake-quantized (quantized to FP8 and back) the way the format says, written here from the
format's description and independent of Pagoda's FP8 code.

- Weights: an FP8 checkpoint's `weight` · `weight_scale` (per tensor or per row); for load-time
  quantization (`online=True`) of a float checkpoint, each fused group's weights (q/k/v of a layer,
  gate/up) share ONE scale, max amax / 448 over the group, as the engine quantizes its fused weight.
- Inputs of every quantized linear: per token (row amax / 448, at least 1 / (448 · 512)) for dynamic
  activations; for static ones the group's largest `input_scale` (the pieces share one input).
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file
from torch import nn

FP8_MAX = 448.0
GROUP_OF = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32) * scale


def per_token(x: torch.Tensor) -> torch.Tensor:
    scale = (x.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1.0 / (FP8_MAX * 512))
    return fake_quant(x, scale)


def group_key(name: str) -> str:
    head, _, last = name.rpartition(".")
    return f"{head}.{GROUP_OF[last]}" if last in GROUP_OF else name


def reference_model(folder: str, online: bool = False, swap_scales: tuple[str, str] | None = None):
    """transformers' fp32 model of `folder` (an FP8 checkpoint, or with `online` a float one) with dequantized
    weights and fake-quantized linear inputs. `swap_scales=(a, b)` exchanges two modules' weight scales: a
    deliberately wrong reference, to show the comparison notices a misplaced scale."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with open(os.path.join(folder, "config.json")) as f:
        quant = json.load(f).get("quantization_config")
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = load_file(os.path.join(folder, "model.safetensors"))
    if online:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
        amax: dict[str, float] = {}
        for name in names:
            key = group_key(name)
            amax[key] = max(amax.get(key, 0.0), float(state[name + ".weight"].abs().max()))
        for name in names:
            scale = torch.tensor(max(amax[group_key(name)] / FP8_MAX, 1.0 / (FP8_MAX * 512)))
            state[name + ".weight"] = fake_quant(state[name + ".weight"].float(), scale)
        input_scales: dict[str, float] = {}
    else:
        names = [k[: -len(".weight_scale")] for k in state if k.endswith(".weight_scale")]
        scales = {name: state.pop(name + ".weight_scale").float() for name in names}
        if swap_scales:
            a, b = swap_scales
            scales[a], scales[b] = scales[b], scales[a]
        for name in names:
            scale = scales[name]
            state[name + ".weight"] = state[name + ".weight"].float() * (scale.reshape(-1, 1) if scale.numel() > 1
                                                                         else scale.reshape(()))
        input_scales = {}
        for name in names:
            if name + ".input_scale" in state:
                key = group_key(name)
                input_scales[key] = max(input_scales.get(key, 0.0), float(state.pop(name + ".input_scale")))
        assert quant["activation_scheme"] == ("static" if input_scales else "dynamic")
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=not getattr(config, "tie_word_embeddings", False))
    modules = dict(model.named_modules())
    for name in names:
        static = input_scales.get(group_key(name))
        hook = (lambda _, args: (per_token(args[0]),)) if static is None else (
            lambda _, args, s=torch.tensor(static): (fake_quant(args[0], s),))
        modules[name].register_forward_pre_hook(hook)
    return model


def greedy(model, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations, one prompt at a time, recomputing the whole sequence each step."""
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            tokens = list(ids)
            for _ in range(max_new_tokens):
                tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
            out.append(tokens[len(ids):])
    return out
