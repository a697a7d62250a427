"""GPTQ int4 / int8 math in plain torch: AutoGPTQ's sequential packing, unpacking, dequantization, the matmul.

Invariants:
- `bits` is 4 or 8; an int32 holds `pack = 32 // bits` values, value i of a pack in bits
  [bits · i, bits · (i + 1)) (sequential order, unlike AWQ's interleaved one). Values are unsigned,
  0 .. 2^bits - 1; a packed element may be negative as an int32 (bit 31 set).
- qweight [K / pack, N] is packed along the INPUT (dim 0): input row pack · r + i is value i of row r.
  qzeros [groups, N / pack] is packed along the OUTPUT (dim 1): column pack · c + i is value i of column c.
- Dequantization on the [K, N] layout (the transpose of nn.Linear's weight), g the group of input row i:
  w[i, j] = (q[i, j] - (z[g, j] + zero_offset)) · s[g, j], with zero_offset 1 for the v1 checkpoint
  format ("gptq": AutoGPTQ stores zero - 1) and 0 for "gptq_v2". g = g_idx[i] where the layer has a
  g_idx (desc_act: any order); otherwise g = i // (K / groups), consecutive groups.
- Computed in the activation dtype: the integers and their differences (|·| <= 256) are exact in fp16,
  bf16 and fp32, so only the product by the scale rounds. No host syncs (CUDA-graph capturable), no Triton.
"""

from __future__ import annotations

import torch

GPTQ_BITS = (4, 8)


def pack_factor(bits: int) -> int:
    return 32 // bits


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    """[pack] int32 bit offsets 0, bits, 2 · bits, ... (arange, not a host list: capturable in a CUDA graph)."""
    return torch.arange(pack_factor(bits), dtype=torch.int32, device=device) * bits


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] int32 packed along dim 0 -> [R · pack, C] int32 values (qweight's layout)."""
    shifts = _shifts(bits, packed.device).view(1, -1, 1)
    values = torch.bitwise_right_shift(packed.unsqueeze(1), shifts).bitwise_and_((1 << bits) - 1)
    return values.reshape(-1, packed.shape[1])


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] int32 packed along dim 1 -> [R, C · pack] int32 values (qzeros' layout)."""
    shifts = _shifts(bits, packed.device)
    values = torch.bitwise_right_shift(packed.unsqueeze(-1), shifts).bitwise_and_((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
               bits: int, zero_offset: int, dtype: torch.dtype) -> torch.Tensor:
    """The [K, N] weight in `dtype` of a GPTQ layer (see the module invariants)."""
    w = unpack_rows(qweight, bits).to(dtype)
    zeros = unpack_cols(qzeros, bits).to(dtype).add_(zero_offset)
    s = scales.to(dtype)
    if g_idx is not None:
        index = g_idx.long()
        return w.sub_(zeros[index]).mul_(s[index])
    groups = scales.shape[0]
    grouped = w.view(groups, w.shape[0] // groups, -1)
    grouped.sub_(zeros.unsqueeze(1)).mul_(s.unsqueeze(1))
    return w


def gptq_linear_reference(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                          g_idx: torch.Tensor | None, bits: int, zero_offset: int,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] @ the dequantized weight [K, N] (+ bias), in x's dtype: the math every GPTQ path must equal."""
    out = torch.matmul(x, dequantize(qweight, qzeros, scales, g_idx, bits, zero_offset, x.dtype))
    return out if bias is None else out + bias.to(x.dtype)
