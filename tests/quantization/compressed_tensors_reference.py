"""The float reference of a compressed-tensors model, written from the format's description and independent of
Pagoda's compressed-tensors code: transformers' fp32 model whose quantized nn.Linear layers get the checkpoint's
dequantized weights and, for W8A8 schemes, fake-quantized inputs.

- pack-quantized: `weight_packed` [out, in / pack]: value i (bits [b·i, b·(i + 1))) of word c is input pack·c + i
  (`order` permutes that: a deliberately wrong packing order); `weight_zero_point` [out / pack, groups]: value i of
  word r is output pack·r + i. Stored values are offset by 2^(b-1); w = (q - z) · s[group], z = 2^(b-1) when
  symmetric (no zero points stored).
- float-quantized / int-quantized: w = weight · weight_scale (per tensor [1] or per row [out, 1]).
- Inputs of W8A8 layers: FP8 as fp8_reference.py (per token, or the static scale); int8 per token with s = row amax
  / 127, or the static scale, q = clamp(round(x / s), -128, 127), x ≈ q · s. A fused group's pieces (q/k/v,
  gate/up) share the largest static scale.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from awq_reference import cached_checkpoint, quant_config
from fp8_reference import fake_quant, group_key, per_token

def unpack(packed: torch.Tensor, bits: int, dim: int, order=None) -> torch.Tensor:
    """int32 packed along `dim` -> int64 stored values; value p of a word is element pack·c + order[p] of the run."""
    pack = 32 // bits
    order = order or tuple(range(pack))
    wide = packed.to(torch.int64)
    wide = wide if dim == 1 else wide.t()
    out = torch.empty(wide.shape[0], wide.shape[1] * pack, dtype=torch.int64)
    for p, column in enumerate(order):
        out[:, column::pack] = (wide >> (bits * p)) & ((1 << bits) - 1)
    return out if dim == 1 else out.t()


def dequantize_packed(state: dict, name: str, bits: int, order=None) -> torch.Tensor:
    """The [out, in] fp32 weight of pack-quantized layer `name` (its tensors popped from `state`)."""
    q = unpack(state.pop(name + ".weight_packed"), bits, 1, order).float()
    s = state.pop(name + ".weight_scale").float()
    zp = state.pop(name + ".weight_zero_point", None)
    z = torch.full_like(s, float(1 << (bits - 1))) if zp is None else unpack(zp, bits, 0).float()
    state.pop(name + ".weight_shape")
    group = q.shape[1] // s.shape[1]
    return (q - z.repeat_interleave(group, dim=1)) * s.repeat_interleave(group, dim=1)


def int8_fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.round(x / scale).clamp(-128, 127) * scale


def int8_per_token(x: torch.Tensor) -> torch.Tensor:
    return int8_fake_quant(x, (x.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-12))


def reference_model(folder: str, swap: tuple[str, str] | None = None, order=None):
    """transformers' fp32 model of compressed-tensors checkpoint `folder` (dequantized weights, fake-quantized W8A8
    inputs). `swap=(a, b)` exchanges two modules' weights and `order` unpacks with a wrong order: wrong references."""
    from transformers import AutoConfig, AutoModelForCausalLM

    group = quant_config(folder)["config_groups"]["group_0"]
    fmt, weights, inputs = group["format"], group["weights"], group["input_activations"]
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = load_file(os.path.join(folder, "model.safetensors"))
    names = [k[: -len(".weight_scale")] for k in list(state) if k.endswith(".weight_scale")]
    input_scales: dict[str, float] = {}
    for name in names:
        if fmt == "pack-quantized":
            state[name + ".weight"] = dequantize_packed(state, name, weights["num_bits"], order)
        else:
            scale = state.pop(name + ".weight_scale").float()
            state[name + ".weight"] = state[name + ".weight"].float() * (scale.reshape(-1, 1) if scale.numel() > 1
                                                                         else scale.reshape(()))
        if name + ".input_scale" in state:
            key = group_key(name)
            input_scales[key] = max(input_scales.get(key, 0.0), float(state.pop(name + ".input_scale").float()))
    if swap:
        a, b = (name + ".weight" for name in swap)
        state[a], state[b] = state[b], state[a]
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=not getattr(config, "tie_word_embeddings", False))
    if inputs is not None:
        fp8 = inputs["type"] == "float"
        modules = dict(model.named_modules())
        for name in names:
            static = input_scales.get(group_key(name))
            if static is None:
                hook = (lambda _, args: (per_token(args[0]),)) if fp8 else (lambda _, args: (int8_per_token(args[0]),))
            else:
                quant = fake_quant if fp8 else int8_fake_quant
                hook = lambda _, args, s=torch.tensor(static), q=quant: (q(args[0], s),)  # noqa: E731
            modules[name].register_forward_pre_hook(hook)
    return model


def ct_checkpoint(tmp_path_factory, tok_dir: str, arch: str = "LlamaForCausalLM", **kwargs) -> str:
    """make_compressed_tensors_checkpoint(arch, ..., **kwargs), built once per arguments for the whole session."""
    from pagoda.tiny_compressed_tensors import make_compressed_tensors_checkpoint

    return cached_checkpoint(make_compressed_tensors_checkpoint, "ct", tmp_path_factory, tok_dir, arch, kwargs)
