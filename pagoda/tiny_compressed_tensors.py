"""Tiny compressed-tensors checkpoints: the tiny models of pagoda/tiny_models.py quantized by a reference quantizer
written from compressed-tensors' documentation, stored in llm-compressor's on-disk layout.

Schemes (`make_compressed_tensors_checkpoint(..., scheme=...)`), every nn.Linear but lm_head (and those `ignore`
names) quantized, config.json `quantization_config` as llm-compressor writes it (`quant_method:
"compressed-tensors"`, one config group `group_0` targeting "Linear", `ignore: ["lm_head", ...]`, `format`,
`quantization_status: "compressed"`):
- "W4A16" / "W8A16" (`pack-quantized`): per group of `group_size` inputs (None: per output channel), symmetric or
  not. Symmetric: s = amax / ((2^b - 1) / 2), q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1); asymmetric (min
  clamped <= 0 <= max): s = (max - min) / (2^b - 1), z = round(clamp(-2^(b-1) - min / s, -2^(b-1), 2^(b-1) - 1)),
  q = clamp(round(w / s + z), ...). Stored: `weight_packed` int32 [out, in / pack] (q + 2^(b-1) in bits
  [b·i, b·(i+1)) of word c for input pack·c + i), `weight_scale` [out, groups], `weight_zero_point` int32
  [out / pack, groups] (z + 2^(b-1), packed along the output) when asymmetric, `weight_shape` int64 [2].
- "FP8" (`float-quantized`): `weight` float8_e4m3fn = clamp(w / s, ±448), s = amax / 448 per tensor ([1]) or per
  channel ([out, 1]); activations dynamic per token, or static with `input_scale` [1] = calibrated input amax / 448
  times a factor in [1, 2) drawn per module (so fused pieces differ).
- "W8A8" (`int-quantized`): `weight` int8 = clamp(round(w / s), -128, 127), s = amax / 127.5 per channel ([out, 1])
  or tensor ([1]); activations int8, dynamic per token, or static with `input_scale` [1] (amax / 127.5 · factor).
Scales are written in `scale_dtype` (bf16 by default, as for a bf16 model) and quantization divides by the stored
(rounded) scale. Deterministic per `seed`.
"""

from __future__ import annotations

import torch

from pagoda.tiny_quantized_models import _calibrate, _float_linears, _write_quantization_config

SCHEMES = {"W4A16": ("pack-quantized", 4), "W8A16": ("pack-quantized", 8), "FP8": ("float-quantized", 8),
           "W8A8": ("int-quantized", 8)}
ACTIVATIONS = ("dynamic", "static")
FP8_MAX = 448.0


def make_compressed_tensors_checkpoint(arch: str, folder: str, tokenizer_folder: str | None = None, *,
                                       scheme: str = "W4A16", group_size: int | None = 32, symmetric: bool = True,
                                       weight_strategy: str = "channel", activations: str = "dynamic",
                                       ignore: tuple = (), scale_dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                                       **config_overrides) -> str:
    """Write a tiny random `arch` model (make_checkpoint's) as a compressed-tensors checkpoint to `folder`; return it.

    `group_size`, `symmetric`: W4A16 / W8A16 only; `weight_strategy` ("tensor" | "channel") and `activations`
    ("dynamic" | "static"): FP8 and W8A8; `ignore`: module names (or "re:" regexes) left float besides lm_head.
    """
    import re

    from safetensors.torch import save_file

    if scheme not in SCHEMES or weight_strategy not in ("tensor", "channel") or activations not in ACTIVATIONS:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, weight_strategy 'tensor' or 'channel' and "
                         f"activations 'dynamic' or 'static', got {scheme!r}, {weight_strategy!r}, {activations!r}")

    def ignored(name: str) -> bool:
        return any(re.match(p[3:], name) if p.startswith("re:") else p == name for p in ignore)

    model, names, path, state = _float_linears(arch, folder, tokenizer_folder, seed, config_overrides, ignored)
    fmt, bits = SCHEMES[scheme]
    static = fmt != "pack-quantized" and activations == "static"
    input_amax = _calibrate(model, names, seed) if static else {}
    gen = torch.Generator().manual_seed(seed + 1)
    for name in names:
        w = state.pop(name + ".weight").float()
        if fmt == "pack-quantized":
            state.update(_pack_quantize(name, w, bits, group_size, symmetric, scale_dtype))
        else:
            state.update(_w8_quantize(name, w, fmt, weight_strategy, scale_dtype))
        if name in input_amax:
            qmax = FP8_MAX if fmt == "float-quantized" else 127.5
            factor = 1.0 + float(torch.rand((), generator=gen))
            state[name + ".input_scale"] = torch.tensor([input_amax[name] / qmax * factor]).to(scale_dtype)
    save_file(state, path, metadata={"format": "pt"})
    _write_quantization_config(folder, quantization_config(scheme, group_size, symmetric, weight_strategy, activations,
                                                           ["lm_head", *ignore]))
    return folder


def quant_args(num_bits: int, qtype: str, symmetric: bool, strategy: str, group_size: int | None = None,
               dynamic: bool = False, observer: str | None = "minmax") -> dict:
    """A QuantizationArgs dict with every field llm-compressor writes."""
    return {"num_bits": num_bits, "type": qtype, "symmetric": symmetric, "group_size": group_size, "strategy": strategy,
            "block_structure": None, "dynamic": dynamic, "actorder": None, "observer": observer, "observer_kwargs": {}}


def quantization_config(scheme: str, group_size: int | None, symmetric: bool, weight_strategy: str, activations: str,
                        ignore: list[str]) -> dict:
    """config.json's `quantization_config` for one of SCHEMES, as llm-compressor writes it."""
    fmt, bits = SCHEMES[scheme]
    if fmt == "pack-quantized":
        strategy = "group" if group_size is not None else "channel"
        weights, inputs = quant_args(bits, "int", symmetric, strategy, group_size), None
    else:
        qtype = "float" if fmt == "float-quantized" else "int"
        weights = quant_args(8, qtype, True, weight_strategy)
        inputs = (quant_args(8, qtype, True, "token", dynamic=True, observer=None) if activations == "dynamic"
                  else quant_args(8, qtype, True, "tensor"))
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "global_compression_ratio": None, "kv_cache_scheme": None, "sparsity_config": {}, "ignore": ignore,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": inputs,
                                          "output_activations": None, "format": fmt}},
            "version": "0.10.2"}


def _pack_quantize(name: str, w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                   scale_dtype: torch.dtype) -> dict:
    """{name.weight_packed, .weight_scale, [.weight_zero_point], .weight_shape} of an nn.Linear weight [out, in]."""
    rows, cols = w.shape
    group = cols if group_size is None else group_size
    pack, q_min, q_max = 32 // bits, -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if cols % group or cols % pack or (not symmetric and rows % pack):
        raise ValueError(f"{name}: [out, in] = [{rows}, {cols}] does not fit group size {group} and {pack} values "
                         "per int32")
    grouped = w.reshape(rows, cols // group, group)
    w_min = grouped.amin(dim=-1).clamp(max=0)
    w_max = grouped.amax(dim=-1).clamp(min=0)
    if symmetric:
        scale = torch.maximum(w_min.abs(), w_max) / ((q_max - q_min) / 2)
    else:
        scale = (w_max - w_min) / (q_max - q_min)
    scale = torch.where(scale == 0, torch.finfo(scale_dtype).eps, scale).to(scale_dtype)
    s = scale.float()
    zero = None if symmetric else torch.round((q_min - w_min / s).clamp(q_min, q_max))
    shifted = grouped / s.unsqueeze(-1) + (0 if zero is None else zero.unsqueeze(-1))
    q = torch.round(shifted).clamp(q_min, q_max).reshape(rows, cols)
    out = {f"{name}.weight_packed": _pack(q - q_min, bits), f"{name}.weight_scale": scale.contiguous(),
           f"{name}.weight_shape": torch.tensor([rows, cols], dtype=torch.int64)}
    if zero is not None:
        out[f"{name}.weight_zero_point"] = _pack((zero - q_min).t(), bits).t().contiguous()
    return out


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] unsigned values 0 .. 2^bits - 1 -> [R, C / pack] int32: value i of each run of pack into bits
    [bits·i, bits·(i+1)) (compressed-tensors' pack_to_int32 along dim 1)."""
    pack = 32 // bits
    v = values.to(torch.int64)
    packed = torch.zeros(v.shape[0], v.shape[1] // pack, dtype=torch.int64)
    for i in range(pack):
        packed |= v[:, i::pack] << (bits * i)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _w8_quantize(name: str, w: torch.Tensor, fmt: str, strategy: str, scale_dtype: torch.dtype) -> dict:
    """{name.weight, name.weight_scale} of an nn.Linear weight [out, in]: fp8 (float-quantized) or int8
    (int-quantized)."""
    amax = w.abs().amax(dim=1, keepdim=True) if strategy == "channel" else w.abs().amax().reshape(1)
    qmax = FP8_MAX if fmt == "float-quantized" else 127.5
    scale = (amax / qmax).clamp(min=1e-8).to(scale_dtype)
    x = w / scale.float()
    if fmt == "float-quantized":
        q = x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    else:
        q = torch.round(x).clamp(-128, 127).to(torch.int8)
    return {f"{name}.weight": q, f"{name}.weight_scale": scale.contiguous()}
