"""compressed-tensors W4A16 / W8A16 (`pack-quantized`): int4 or int8 weights packed into int32 along the INPUT, one
scale per group of G inputs (or per output channel), optional zero points; activations stay in the model dtype.

The checkpoint, per quantized linear layer (compressed-tensors' PackedQuantizationCompressor; bits b = 4 or 8,
pack = 32 / b values per int32, N outputs, K inputs):
- `weight_packed` int32 [N, K / pack]: value i (bits [b·i, b·(i + 1))) of word c of row n is input k = pack·c + i.
  Values are stored unsigned, offset by 2^(b-1) (int4: q + 8, so -8 .. 7 is stored as 0 .. 15).
- `weight_scale` [N, K / G] (strategy "group") or [N, 1] ("channel"), in the model dtype (bf16 / fp16 / fp32).
- `weight_zero_point` int32 [N / pack, groups] when asymmetric: the signed zero points (same offset 2^(b-1)),
  packed along the OUTPUT (value i of word r of column g is output n = pack·r + i). Symmetric layers store none.
- `weight_shape` int64 [2] = [N, K]: not a parameter here (the layer knows its shape); the loader skips it.
- Dequantization, g = k // G: w[n, k] = (q[n, k] - z[n, g]) · s[n, g] with q, z the stored unsigned values
  (symmetric: z = 2^(b-1)), which equals compressed-tensors' (q_signed - z_signed) · s.

Invariants:
- A layer holds weight_packed (`output_dim` 0, `input_dim` 1, `packed_dim` 1), weight_scale (`output_dim` 0, and
  `input_dim` 1 for groups, so tensor-parallel shards split whole groups) in the model dtype, and weight_zero_point
  (`packed_dim` 0) when asymmetric. The input on a rank must be a multiple of pack and of G, and with zero points each
  piece's output size a multiple of pack, else a ValueError naming the layer.
- What runs where: on CPU, for 8-bit (W8A16) weights, for layers outside the int4 kernels' layout (K % 128 != 0, a
  group size other than 16, 32, 64 or a multiple of 128) and with PAGODA_INT4_KERNELS=0, `apply` is the torch
  reference x @ dequantize_wna16(...)ᵀ + bias (a pending RMSNorm materialized first; no host syncs), and
  `dequantize_wna16` is the one function turning the stored tensors into the [N, K] weight. On CUDA, 4-bit layers
  that fit are repacked by `process_weights_after_loading` into the int4 kernels' layout (int4_linear.py's
  repack_compressed_tensors: channel-wise is one group over the input, symmetric layers the kernels' constant zero
  8; the checkpoint-layout parameters are then gone) and `apply` / `apply_silu_and_mul` run the Triton int4 GEMV
  (few rows; a pending RMSNorm and the SiLU·mul fused), GEMM or dequant + cuBLAS, equal to the reference up to
  fp32 summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.model_executor.layers.linear import LinearMethod, set_weight_attrs
from pagoda.model_executor.layers.quantization.compressed_tensors_args import QuantArgs
from pagoda.model_executor.layers.quantization.int4_linear import (
    has_int4_layout,
    int4_matmul,
    kernels_apply,
    materialize,
    repack_compressed_tensors,
)


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(32 // bits, dtype=torch.int32, device=device) * bits


def unpack_input_packed(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] int32 packed along dim 1 -> [R, C · pack] int32 stored (unsigned) values, value i of word c at column
    pack·c + i (weight_packed's layout)."""
    values = torch.bitwise_right_shift(packed.unsqueeze(-1), _shifts(bits, packed.device)).bitwise_and_((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)


def unpack_output_packed(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] int32 packed along dim 0 -> [R · pack, C] stored values, value i of word r at row pack·r + i
    (weight_zero_point's layout)."""
    return unpack_input_packed(packed.t(), bits).t()


def dequantize_wna16(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_zero_point: torch.Tensor | None,
                     bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] weight in `dtype` (nn.Linear's layout) of a pack-quantized layer (see the module docstring).

    The group size is K / weight_scale.shape[1] (channel: one group). Integer differences (|·| < 2^bits) are exact in
    fp16, bf16 and fp32; only the product by the scale rounds."""
    w = unpack_input_packed(weight_packed, bits).to(dtype)
    rows, groups = weight_scale.shape
    grouped = w.view(rows, groups, -1)
    if weight_zero_point is None:
        grouped.sub_(1 << (bits - 1))
    else:
        grouped.sub_(unpack_output_packed(weight_zero_point, bits)[:rows].to(dtype).unsqueeze(-1))
    grouped.mul_(weight_scale.to(dtype).unsqueeze(-1))
    return w


class WNA16LinearMethod(LinearMethod):
    """compressed-tensors pack-quantized weights: the int4 kernels after repacking (4-bit on CUDA), else dequantize
    to the activation dtype, then F.linear."""

    def __init__(self, weights: QuantArgs) -> None:
        self.bits = weights.num_bits
        self.pack = 32 // weights.num_bits
        self.symmetric = weights.symmetric
        self.group_size = weights.group_size if weights.strategy == "group" else None  # None: per channel

    def _check_shapes(self, layer: nn.Module, cols: int, output_partition_sizes: list[int]) -> None:
        name = layer.prefix or type(layer).__name__
        if cols % self.pack:
            raise ValueError(f"{name}: its input size {cols} (on this rank) is not a multiple of {self.pack}, the "
                             f"{self.bits}-bit values compressed-tensors packs per int32 along the input")
        group = self.group_size
        if group is not None and (cols % group or layer.input_size % group):
            raise ValueError(f"{name}: its input size {cols} (on this rank; {layer.input_size} in all) is not a "
                             f"multiple of the group size {group} (a tensor-parallel size too large for this "
                             "checkpoint?)")
        if not self.symmetric and any(size % self.pack for size in output_partition_sizes):
            raise ValueError(f"{name}: output sizes {output_partition_sizes} (on this rank) are not multiples of "
                             f"{self.pack}, the {self.bits}-bit zero points compressed-tensors packs per int32")

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        rows, cols, pack = sum(output_partition_sizes), input_size_per_partition, self.pack
        self._check_shapes(layer, cols, output_partition_sizes)
        groups = 1 if self.group_size is None else cols // self.group_size
        per_group = {"output_dim": 0, **({"input_dim": 1} if self.group_size is not None else {})}
        shapes = {"weight_packed": ((rows, cols // pack), torch.int32,
                                    {"output_dim": 0, "input_dim": 1, "packed_dim": 1, "packed_factor": pack}),
                  "weight_scale": ((rows, groups), params_dtype, per_group)}
        if not self.symmetric:
            shapes["weight_zero_point"] = ((rows // pack, groups), torch.int32,
                                           {**per_group, "packed_dim": 0, "packed_factor": pack})
        for name, (shape, dtype, attrs) in shapes.items():
            param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(param, attrs)
            layer.register_parameter(name, param)

    def dequantized_weight(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """The layer's [N, K] weight in `dtype`, from the checkpoint-layout tensors (the torch path's)."""
        return dequantize_wna16(layer.weight_packed, layer.weight_scale, getattr(layer, "weight_zero_point", None),
                                self.bits, dtype)

    # a PendingRMSNorm reaches `apply`: fused into the int4 GEMV, materialized on the other paths
    takes_pending_norm = True

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if kernels_apply(layer.weight_packed):
            repack_compressed_tensors(layer, self.bits)  # False (torch path kept) for 8-bit or other shapes

    def apply(self, layer, x, bias):
        if has_int4_layout(layer):
            return int4_matmul(layer, x, bias, None)
        x = materialize(x)
        return F.linear(x, self.dequantized_weight(layer, x.dtype), None if bias is None else bias.to(x.dtype))

    def apply_silu_and_mul(self, layer, x, bias, act):
        if has_int4_layout(layer):
            return int4_matmul(layer, x, bias, act)
        return act(self.apply(layer, x, bias))
