"""Tiny quantized checkpoints: the tiny models of pagoda/tiny_models.py, quantized by reference quantizers
written from each format's documentation (vLLM's "fp8", AutoAWQ's GEMM layout, AutoGPTQ).

Invariants:
- Each builder writes an ordinary `make_checkpoint` folder first, then replaces its linear weights by the
  format's tensors and adds the format's quantization config; transformers cannot load the result as is,
  and the tensors it stores (dequantized) are the tests' reference weights.
- Deterministic per `seed`, like the models they start from.
"""

from __future__ import annotations

import json
import os

from pagoda.tiny_models import make_checkpoint


def _float_linears(arch: str, folder: str, tokenizer_folder: str | None, seed: int, overrides: dict, skipped):
    """Write make_checkpoint's float32 model to `folder`; (the transformers model, the names of its nn.Linear
    layers to quantize: all but lm_head and those `skipped(name)` says, the safetensors path, its tensors)."""
    import torch
    from safetensors.torch import load_file
    from torch import nn
    from transformers import AutoModelForCausalLM

    make_checkpoint(arch, folder, tokenizer_folder, dtype="float32", seed=seed, **overrides)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head" and not skipped(n)]
    path = os.path.join(folder, "model.safetensors")
    return model, names, path, load_file(path)


def _write_quantization_config(folder: str, quantization_config: dict) -> None:
    """Add `quantization_config` to the folder's config.json."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = quantization_config
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

FP8_MAX = 448.0  # the largest float8_e4m3fn value


def make_fp8_checkpoint(arch: str, folder: str, tokenizer_folder: str | None = None, *, weight_scales: str = "tensor",
                        activation_scheme: str = "dynamic", ignored_layers: tuple = (),
                        ignore_key: str = "ignored_layers", seed: int = 0, **config_overrides) -> str:
    """Write a tiny random `arch` model (make_checkpoint's) as an FP8 checkpoint to `folder`; return `folder`.

    The format, as vLLM's `quant_method: "fp8"` checkpoints (AutoFP8, llm-compressor) store it: every
    nn.Linear but `lm_head` and the modules in `ignored_layers` (written under `ignore_key`, vLLM reads
    "ignored_layers" or "modules_to_not_convert") keeps `weight` as float8_e4m3fn [out, in], with
    `weight = float8_e4m3fn(clamp(w / weight_scale, ±448))`; `weight_scale` is fp32, per tensor (a scalar [],
    amax / 448) or per output channel ([out, 1], row amax / 448). With `activation_scheme="static"`
    each such module also stores `input_scale` [1]: the amax of its input over a calibration batch
    / 448, times a factor in [1, 2) drawn per module, so that fused pieces (q/k/v, gate/up) carry
    different scales. config.json gets `quantization_config`.
    """
    import torch
    from safetensors.torch import save_file

    if weight_scales not in ("tensor", "channel") or activation_scheme not in ("dynamic", "static"):
        raise ValueError(f"weight_scales must be 'tensor' or 'channel' and activation_scheme 'dynamic' or 'static', "
                         f"got {weight_scales!r}, {activation_scheme!r}")
    model, names, path, state = _float_linears(arch, folder, tokenizer_folder, seed, config_overrides,
                                               lambda name: name in ignored_layers)
    input_amax = _calibrate(model, names, seed) if activation_scheme == "static" else {}
    gen = torch.Generator().manual_seed(seed + 1)
    for name in names:
        w = state[name + ".weight"].float()
        amax = w.abs().amax(dim=1, keepdim=True) if weight_scales == "channel" else w.abs().amax()
        scale = (amax / FP8_MAX).clamp(min=1e-12)
        state[name + ".weight"] = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        state[name + ".weight_scale"] = scale.to(torch.float32).contiguous()
        if name in input_amax:
            factor = 1.0 + float(torch.rand((), generator=gen))
            state[name + ".input_scale"] = torch.tensor([input_amax[name] / FP8_MAX * factor], dtype=torch.float32)
    save_file(state, path, metadata={"format": "pt"})
    _write_quantization_config(folder, {"quant_method": "fp8", "activation_scheme": activation_scheme,
                                        ignore_key: list(ignored_layers)})
    return folder


def _calibrate(model, names: list[str], seed: int) -> dict:
    """{module name: amax of its input} over a fixed batch of random token ids."""
    import torch

    amax: dict = {}
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_pre_hook(
        lambda _, args, name=name: amax.__setitem__(name, max(amax.get(name, 0.0), float(args[0].abs().max()))))
        for name in names]
    ids = torch.randint(0, model.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return amax


AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble i of a packed int32 holds column AWQ_PACK_ORDER[i]


def make_awq_checkpoint(arch: str, folder: str, tokenizer_folder: str | None = None, *, group_size: int = 64,
                        modules_to_not_convert: tuple | None = (), config_file: str = "config.json", seed: int = 0,
                        **config_overrides) -> str:
    """Write a tiny random `arch` model (make_checkpoint's) as an AWQ checkpoint to `folder`; return `folder`.

    The format, as AutoAWQ's GEMM version stores it (vLLM's `quant_method: "awq"`), with a plain
    min/max quantizer (no activation-aware scale search: the format is what matters here): every
    nn.Linear but `lm_head` and those whose name contains an entry of `modules_to_not_convert` (AWQ's
    substring rule) is replaced by `qweight` int32 [in, out / 8], `qzeros` int32 [in / G, out / 8] and
    `scales` fp16 [in / G, out] (G = `group_size`, -1: the whole input). Per group of G input
    channels and output channel j: s = (max - min) / 15 (at least 1e-5 / 15, rounded to fp16),
    z = clamp(-round(min / s), 0, 15), q = clamp(round(w / s) + z, 0, 15), so w ≈ (q - z) · s. Eight
    4-bit values are packed per int32 along the output in AutoAWQ's order (nibble i holds column
    8c + AWQ_PACK_ORDER[i]). Biases and unquantized layers keep their float tensors.
    `config_file="config.json"` writes `quantization_config` into config.json;
    "quant_config.json" / "quantize_config.json" writes AutoAWQ's older file beside it instead
    (`w_bit`, `q_group_size`, `zero_point`, `version: "GEMM"`).
    """
    from safetensors.torch import save_file

    if config_file not in ("config.json", "quant_config.json", "quantize_config.json"):
        raise ValueError(f"config_file must be config.json, quant_config.json or quantize_config.json, got {config_file!r}")
    skip = list(modules_to_not_convert or ())
    _, names, path, state = _float_linears(arch, folder, tokenizer_folder, seed, config_overrides,
                                           lambda name: any(s in name for s in skip))
    for name in names:
        state.update(_awq_quantize(name, state.pop(name + ".weight"), group_size))
    save_file(state, path, metadata={"format": "pt"})
    if config_file == "config.json":
        _write_quantization_config(folder, {"quant_method": "awq", "bits": 4, "group_size": group_size,
                                            "zero_point": True, "version": "gemm",
                                            "modules_to_not_convert": None if modules_to_not_convert is None else skip})
    else:
        with open(os.path.join(folder, config_file), "w") as f:
            json.dump({"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM",
                       "modules_to_not_convert": skip or None}, f, indent=2)
    return folder


def _awq_quantize(name: str, weight, group_size: int) -> dict:
    """{name.qweight, name.qzeros, name.scales} of an nn.Linear weight [out, in] (make_awq_checkpoint's quantizer)."""
    import torch

    w = weight.float().t()  # [in, out]: AWQ stores the transpose of nn.Linear's weight
    rows, cols = w.shape
    group = rows if group_size == -1 else group_size
    if rows % group or cols % 8:
        raise ValueError(f"{name}: [in, out] = [{rows}, {cols}] does not fit group size {group} and 8 values per int32")
    grouped = w.reshape(rows // group, group, cols)
    w_max, w_min = grouped.amax(dim=1), grouped.amin(dim=1)
    scales = ((w_max - w_min).clamp(min=1e-5) / 15).to(torch.float16)
    s = scales.float()
    zeros = (-torch.round(w_min / s)).clamp(0, 15)
    q = (torch.round(grouped / s.unsqueeze(1)) + zeros.unsqueeze(1)).clamp(0, 15).reshape(rows, cols)
    return {f"{name}.qweight": _awq_pack(q), f"{name}.qzeros": _awq_pack(zeros), f"{name}.scales": scales.contiguous()}


def _awq_pack(values):
    """[R, 8 · C] values 0..15 -> [R, C] int32, AutoAWQ's order: column 8c + AWQ_PACK_ORDER[i] into bits 4i..4i+3."""
    import torch

    v = values.to(torch.int64)
    packed = torch.zeros(v.shape[0], v.shape[1] // 8, dtype=torch.int64)
    for c in range(packed.shape[1]):
        for i, column in enumerate(AWQ_PACK_ORDER):
            packed[:, c] |= v[:, 8 * c + column] << (4 * i)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def make_gptq_checkpoint(arch: str, folder: str, tokenizer_folder: str | None = None, *, bits: int = 4,
                         group_size: int = 32, desc_act: bool = False, sym: bool = True,
                         checkpoint_format: str = "gptq", modules_to_not_convert: tuple = (),
                         config_file: str = "config.json", seed: int = 0, **config_overrides) -> str:
    """Write a tiny random `arch` model (make_checkpoint's) as a GPTQ checkpoint to `folder`; return `folder`.

    The format, as AutoGPTQ stores it (vLLM's `quant_method: "gptq"`), with round-to-nearest per group
    (no Hessian update: the format is what matters here): every nn.Linear but `lm_head` and those whose
    name contains an entry of `modules_to_not_convert` is replaced by `qweight` int32 [in / pack, out]
    (packed along the input, value i of a word in bits [bits · i, bits · (i + 1))), `qzeros` int32
    [groups, out / pack] (packed along the output), `scales` fp16 [groups, out] and `g_idx` int32 [in].
    maxq = 2^bits - 1; per group and output column: asymmetric s = (max - min) / maxq,
    z = clamp(round(-min / s), 1, maxq) (at least 1: v1 stores z - 1, which must not be negative);
    symmetric s = 2 · max|w| / maxq, z = (maxq + 1) / 2; q = clamp(round(w / s) + z, 0, maxq).
    v1 (`checkpoint_format="gptq"`) stores z - 1, "gptq_v2" stores z. Without `desc_act`
    g_idx[i] = i // G; with it a random permutation (one per input: q/k/v share one, gate/up another,
    as AutoGPTQ's shared Hessian gives) assigns groups: the k-th row of the order is in group k // G.
    `config_file` "config.json" writes `quantization_config`; "quantize_config.json" AutoGPTQ's file.
    """
    import torch
    from safetensors.torch import save_file

    if config_file not in ("config.json", "quantize_config.json"):
        raise ValueError(f"config_file must be config.json or quantize_config.json, got {config_file!r}")
    skip = list(modules_to_not_convert or ())
    _, names, path, state = _float_linears(arch, folder, tokenizer_folder, seed, config_overrides,
                                           lambda name: any(s in name for s in skip))
    generator = torch.Generator().manual_seed(seed + 1)
    orders: dict[str, torch.Tensor] = {}
    for name in names:
        weight = state.pop(name + ".weight")
        order = None
        if desc_act:  # modules reading the same input (all but o_proj / down_proj of a block) share an order
            key = name if name.endswith(("o_proj", "down_proj")) else name.rsplit(".", 1)[0]
            order = orders.setdefault(key, torch.randperm(weight.shape[1], generator=generator))
        state.update(_gptq_quantize(name, weight, bits, group_size, sym, checkpoint_format, order))
    save_file(state, path, metadata={"format": "pt"})
    quant = {"bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
             "checkpoint_format": checkpoint_format, **({"modules_to_not_convert": skip} if skip else {})}
    if config_file == "config.json":
        _write_quantization_config(folder, {"quant_method": "gptq", **quant})
    else:
        with open(os.path.join(folder, config_file), "w") as f:
            json.dump(quant, f, indent=2)
    return folder


def _gptq_quantize(name: str, weight, bits: int, group_size: int, sym: bool, checkpoint_format: str, order) -> dict:
    """{name.qweight, .qzeros, .scales, .g_idx} of an nn.Linear weight [out, in] (make_gptq_checkpoint's quantizer)."""
    import torch

    w = weight.float().t()  # [in, out]: GPTQ stores the transpose of nn.Linear's weight
    rows, cols = w.shape
    group = rows if group_size == -1 else group_size
    pack, maxq = 32 // bits, (1 << bits) - 1
    if rows % group or rows % pack or cols % pack:
        raise ValueError(f"{name}: [in, out] = [{rows}, {cols}] does not fit group size {group} and {pack} values "
                         "per int32")
    g_idx = torch.arange(rows) // group
    if order is not None:
        g_idx = torch.empty(rows, dtype=torch.int64)
        g_idx[order] = torch.arange(rows) // group
    groups = rows // group
    scales = torch.empty(groups, cols)
    zeros = torch.empty(groups, cols)
    for g in range(groups):
        block = w[g_idx == g]
        if sym:
            s = (2 * block.abs().amax(dim=0) / maxq).clamp(min=1e-5)
            z = torch.full((cols,), float((maxq + 1) // 2))
        else:
            w_max, w_min = block.amax(dim=0), block.amin(dim=0)
            s = ((w_max - w_min) / maxq).clamp(min=1e-5)
            z = None
        scales[g] = s.to(torch.float16).float()
        zeros[g] = z if z is not None else (-torch.round(w_min / scales[g])).clamp(1, maxq)
    q = (torch.round(w / scales[g_idx]) + zeros[g_idx]).clamp(0, maxq)
    stored = zeros - (1 if checkpoint_format == "gptq" else 0)
    return {f"{name}.qweight": _gptq_pack(q, bits, dim=0), f"{name}.qzeros": _gptq_pack(stored, bits, dim=1),
            f"{name}.scales": scales.to(torch.float16).contiguous(), f"{name}.g_idx": g_idx.to(torch.int32)}


def _gptq_pack(values, bits: int, dim: int):
    """Integers 0 .. 2^bits - 1 -> int32 packed along `dim`: value i of each run of 32 / bits into bits [bits · i, ...)."""
    import torch

    pack = 32 // bits
    v = values.to(torch.int64)
    v = v.t() if dim == 1 else v
    packed = torch.zeros(v.shape[0] // pack, v.shape[1], dtype=torch.int64)
    for i in range(pack):
        packed |= v[i::pack] << (bits * i)
    packed = packed.t() if dim == 1 else packed
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32).contiguous()
