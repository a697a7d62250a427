"""compressed-tensors W8A8 int8 (`int-quantized` / `naive-quantized`): symmetric int8 weights with fp scales per
output channel (or per tensor), activations quantized to int8 per call, the product accumulated in int32.

The checkpoint, per quantized linear layer: `weight` int8 [N, K] (signed, -128 .. 127, not offset), `weight_scale`
[N, 1] (strategy "channel") or [1] ("tensor") in the model dtype, and for static activations `input_scale` [1].
w = weight · weight_scale.

Invariants:
- A layer holds `weight` int8 [N, K], `weight_scale` fp32 [N, 1] (a fused layer's pieces keep their own scales, a
  per-tensor one repeated over its rows, nothing requantized) and, static, `input_scale` fp32 [1]: the largest of
  the fused pieces' scales after loading (they share one input; vLLM does the same).
- Activations x [M, K] are quantized as vLLM's int8 kernels do: scale s = row amax / 127 (dynamic, per token, at
  least MIN_SCALE) or the static scale; q = clamp(round_half_even(x / s), -128, 127).
- `int8_linear` computes (q_x @ q_wᵀ) in int32, then · s_x · s_wᵀ (+ bias) in fp32, cast to x's dtype: with
  torch._int_mm on CPU (exact), and on other devices as an fp32 matmul of the integer values (exact while
  K · 128² < 2^24, i.e. K <= 1024; beyond, fp32 rounding of the sum). An int8 Triton / _int_mm GPU path can
  replace the fp32 one behind `int8_linear` (not done: untested on a GPU here). No host syncs.
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.model_executor.layers.linear import LinearMethod, set_weight_attrs

INT8_MAX = 127.0
MIN_SCALE = 1e-12  # a zero row quantizes to zeros, never to NaN


def quantize_int8(x: torch.Tensor, static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [M, K], scale fp32 [M, 1] or [1]) of activations x [M, K]: per token, or with the static scale."""
    xf = x.float()
    if static_scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp_(min=MIN_SCALE)
    else:
        scale = static_scale.float()
    return torch.round(xf / scale).clamp_(-128, 127).to(torch.int8), scale


def int8_linear(q_x: torch.Tensor, x_scale: torch.Tensor, q_w: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """(q_x @ q_wᵀ) · x_scale · w_scaleᵀ + bias in fp32, as out_dtype; q_x [M, K], q_w [N, K] int8, w_scale
    [N, 1]."""
    if q_x.device.type == "cpu":
        acc = torch._int_mm(q_x, q_w.t()).float()
    else:
        acc = q_x.float() @ q_w.float().t()
    out = acc.mul_(x_scale).mul_(w_scale.reshape(1, -1))
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


class Int8W8A8LinearMethod(LinearMethod):
    """int8 weight [N, K] with per-row fp32 scales; activations quantized to int8 per call (dynamic or static)."""

    def __init__(self, static_input: bool) -> None:
        self.static_input = static_input

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        rows = sum(output_partition_sizes)
        weight = nn.Parameter(torch.empty(rows, input_size_per_partition, dtype=torch.int8), requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0})
        layer.register_parameter("weight", weight)
        weight_scale = nn.Parameter(torch.empty(rows, 1, dtype=torch.float32), requires_grad=False)
        set_weight_attrs(weight_scale, {"output_dim": 0, "broadcast_scalar": True})
        layer.register_parameter("weight_scale", weight_scale)
        layer.register_parameter("input_scale", None)
        if self.static_input:
            input_scale = nn.Parameter(torch.empty(len(output_partition_sizes), dtype=torch.float32),
                                       requires_grad=False)
            set_weight_attrs(input_scale, {"per_piece": True})
            layer.input_scale = input_scale

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        _check_scale(layer.weight_scale.data, f"{layer.prefix}.weight_scale", zero_ok=True)
        if layer.input_scale is not None:
            _check_scale(layer.input_scale.data, f"{layer.prefix}.input_scale", zero_ok=False)
            layer.input_scale = nn.Parameter(layer.input_scale.data.max().reshape(1), requires_grad=False)

    def apply(self, layer, x, bias):
        shape = x.shape
        q_x, x_scale = quantize_int8(x.reshape(-1, shape[-1]), layer.input_scale)
        out = int8_linear(q_x, x_scale, layer.weight, layer.weight_scale, bias, x.dtype)
        return out.reshape(*shape[:-1], out.shape[-1])


def _check_scale(scale: torch.Tensor, name: str, zero_ok: bool) -> None:
    low = scale < 0 if zero_ok else scale <= 0
    if not bool(torch.isfinite(scale).all()) or bool(low.any()):
        bound = ">=" if zero_ok else ">"
        raise ValueError(f"checkpoint tensor {name!r}: int8 scales must be finite and {bound} 0, got "
                         f"{scale.flatten()[:8].tolist()}")
