"""The float reference of a GPTQ model, written from the format's description and independent of Pagoda's GPTQ
code: transformers' fp32 model whose nn.Linear weights are the checkpoint's dequantized ones.

- qweight [in / pack, out]: value i (bits [bits · i, bits · (i + 1))) of row r is input row pack · r + i.
- qzeros [groups, out / pack]: value i of column c is output column pack · c + i.
- w[i, j] = (q[i, j] - (z[g_idx[i], j] + 1)) · s[g_idx[i], j] for checkpoint_format "gptq" (v1), without the
  + 1 for "gptq_v2"; without desc_act the group of row i is i // G (G = -1: the whole input).
"""

from __future__ import annotations


import torch

from awq_reference import cached_checkpoint, dequantized_model, quant_config


def unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    pack, wide = 32 // bits, packed.to(torch.int64)
    wide = wide if dim == 0 else wide.t()
    out = torch.empty(wide.shape[0] * pack, wide.shape[1], dtype=torch.int64)
    for i in range(pack):
        out[i::pack] = (wide >> (bits * i)) & ((1 << bits) - 1)
    return out if dim == 0 else out.t()


def dequantize(state: dict, name: str, quant: dict) -> torch.Tensor:
    """The [in, out] fp32 weight of layer `name` (its tensors popped from `state`)."""
    bits = quant["bits"]
    q = unpack(state.pop(name + ".qweight"), bits, 0).float()
    z = unpack(state.pop(name + ".qzeros"), bits, 1).float() + (quant.get("checkpoint_format") != "gptq_v2")
    s = state.pop(name + ".scales").float()
    g_idx = state.pop(name + ".g_idx").long()
    if not quant["desc_act"]:
        g_idx = torch.arange(q.shape[0]) // (q.shape[0] if quant["group_size"] == -1 else quant["group_size"])
    return (q - z[g_idx]) * s[g_idx]


def reference_model(folder: str, swap: tuple[str, str] | None = None):
    """transformers' fp32 model of GPTQ checkpoint `folder` with dequantized weights (`swap`: two modules' weights
    exchanged, a deliberately wrong reference)."""
    quant = quant_config(folder)
    return dequantized_model(folder, lambda state, name: dequantize(state, name, quant), swap)


def gptq_checkpoint(tmp_path_factory, tok_dir: str, arch: str = "LlamaForCausalLM", **kwargs) -> str:
    """make_gptq_checkpoint(arch, ..., **kwargs), built once per arguments for the whole session."""
    from pagoda.tiny_quantized_models import make_gptq_checkpoint

    return cached_checkpoint(make_gptq_checkpoint, "gptq", tmp_path_factory, tok_dir, arch, kwargs)
