"""FP8 (float8_e4m3fn) quantization math: scales, casts, and the scaled matmul with its CPU reference.

Invariants:
- q = clamp(x / scale, -448, 448) cast to float8_e4m3fn (round to nearest even), computed in fp32;
  x ≈ q · scale. Scales are fp32 and at least MIN_SCALE (vLLM's floor for dynamic scales), so a zero
  row or tensor quantizes to zeros, never to NaN.
- Dynamic activation scales are per token: row amax / 448. A static scale is one fp32 value.
- `fp8_linear_reference` is the math every path must equal: (q_x · s_x) @ (q_w · s_w)ᵀ in fp32, plus
  the bias, cast to the output dtype. `fp8_linear_scaled_mm` is the same product through
  `torch._scaled_mm` (CUDA only, compute capability 8.9+, bf16 output, K and N multiples of 16).
- Everything here is plain torch: nothing needs Triton, and every op can be captured in a CUDA graph
  (no host syncs).
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale (broadcast), clamped to the FP8 range and cast to float8_e4m3fn (one fp32 temporary)."""
    q = x.to(torch.float32, copy=True)
    return q.div_(scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _amax(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """max |x| in fp32 (over `dim`, kept; None: all), without a temporary of x's size."""
    return torch.linalg.vector_norm(x, float("inf"), dim=dim, keepdim=dim is not None, dtype=torch.float32)


def _over_max(amax: torch.Tensor) -> torch.Tensor:
    """amax / 448, an IEEE division on every device (CUDA torch multiplies by the reciprocal of a Python scalar,
    which can differ in the last bit from the division the CPU and the Triton kernel do)."""
    return amax / amax.new_full((), FP8_MAX)


def per_token_scales(x: torch.Tensor) -> torch.Tensor:
    """[M, 1] fp32: each row's amax / 448 (dynamic per-token activation scales)."""
    return _over_max(_amax(x, -1)).clamp_(min=MIN_SCALE)


def per_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """[] fp32: amax / 448 over the whole tensor."""
    return _over_max(_amax(x, None)).clamp_(min=MIN_SCALE)


def quantize_activation(x: torch.Tensor, static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [M, K] fp8, scale [M, 1] or [1] fp32) of activations [M, K]: per token, or with the static scale."""
    scale = per_token_scales(x) if static_scale is None else static_scale
    return quantize(x, scale), scale


def fp8_linear_reference(q_x: torch.Tensor, x_scale: torch.Tensor, q_w: torch.Tensor, w_scale: torch.Tensor,
                         bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """(q_x · x_scale) @ (q_w · w_scale)ᵀ + bias in fp32, as out_dtype. q_w [N, K], w_scale [N, 1]."""
    out = (q_x.float() * x_scale) @ (q_w.float() * w_scale).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def scaled_mm_supported(weight: torch.Tensor) -> bool:
    """Whether `torch._scaled_mm` can multiply by this FP8 weight [N, K] (on the GPU it lives on)."""
    if not weight.is_cuda or not hasattr(torch, "_scaled_mm"):
        return False
    n, k = weight.shape
    return torch.cuda.get_device_capability(weight.device) >= (8, 9) and n % 16 == 0 and k % 16 == 0


def fp8_linear_scaled_mm(q_x: torch.Tensor, x_scale: torch.Tensor, q_w: torch.Tensor, w_scale: torch.Tensor,
                         bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """GPU-only (untested on CPU): fp8_linear_reference through cuBLASLt with row-wise scales.

    q_w [N, K] row-major is passed transposed (column-major [K, N], as _scaled_mm wants); x_scale
    [M, 1] (a static [1] scale is expanded to rows), w_scale [N, 1] as [1, N].
    """
    rows = q_x.shape[0]
    if x_scale.numel() == 1:
        x_scale = x_scale.reshape(1, 1).expand(rows, 1).contiguous()
    out = torch._scaled_mm(q_x, q_w.t(), scale_a=x_scale, scale_b=w_scale.reshape(1, -1), out_dtype=out_dtype)
    return out if bias is None else out + bias
