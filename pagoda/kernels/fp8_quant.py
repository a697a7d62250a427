"""FP8 (e4m3) activation quantization for FP8 linear layers (Triton), with a torch reference.

The torch form of a dynamic per-token quantization (amax, divide, clamp, cast) is five passes over the
activations with an fp32 temporary of their size; at 8192 tokens it cost as much as the FP8 matmul it feeds
(H200, docs/benchmarks.md). Here each program owns one row: it reads the row once for its amax, then again
(from L2) to write the FP8 values, so the activations are read about once from HBM.

Math (equal to pagoda.model_executor.layers.quantization.fp8_utils, bit for bit):
- dynamic: scale[m] = max(amax(|x[m]|) / 448, min_scale) in fp32; static: one fp32 scale for all rows;
- q = clamp(x / scale, -448, 448) in fp32 (IEEE division, `div_rn`), rounded to nearest even onto the e4m3
  grid, stored as float8_e4m3fn. The rounding is done in fp32 (kv_cache_write.quantize_fp8, with a unit
  scale) so the final cast is exact: Triton's interpreter rounds some fp32 -> fp8 casts wrongly.

Shapes: x [M, K] (unit stride in K, any row stride), any float dtype; q [M, K] float8_e4m3fn contiguous;
scales [M, 1] fp32 (dynamic) or the given [1] / [] static scale. Nothing here syncs with the host, so the
kernels can be captured in CUDA graphs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.kv_cache_write import quantize_fp8

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


@triton.jit
def _fp8_quant_kernel(
    x_ptr, q_ptr, scale_ptr, K, stride_xm, stride_qm, min_scale,
    DYNAMIC: tl.constexpr, BLOCK: tl.constexpr,
    FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr, FP8_MAGIC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    if DYNAMIC:
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), FP8_MAX), min_scale)
        tl.store(scale_ptr + row, scale)
    else:
        scale = tl.load(scale_ptr).to(tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        mask = offs < K
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        q = quantize_fp8(tl.math.div_rn(x, scale), 1.0, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
        tl.store(q_row + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def fp8_quantize(x: torch.Tensor, static_scale: torch.Tensor | None = None,
                 min_scale: float = 1.0 / (E4M3_MAX * 512.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [M, K] float8_e4m3fn, scale) of activations x [M, K]: per-token scales [M, 1] fp32 (dynamic), or
    `static_scale` (one fp32 value) as given. See the module docstring for the math."""
    if x.dim() != 2:
        raise ValueError(f"fp8_quantize needs x [M, K], got {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    M, K = x.shape
    q = torch.empty(M, K, dtype=E4M3, device=x.device)
    dynamic = static_scale is None
    scale = torch.empty(M, 1, dtype=torch.float32, device=x.device) if dynamic else static_scale
    if static_scale is not None and static_scale.numel() != 1:
        raise ValueError(f"a static scale is one value, got shape {tuple(static_scale.shape)}")
    if M == 0 or K == 0:
        return q, scale
    block = min(4096, tuning.next_power_of_2(K))
    _fp8_quant_kernel[(M,)](
        x, q, scale, K, x.stride(0), q.stride(0), float(min_scale),
        DYNAMIC=dynamic, BLOCK=block, **_E4M3_CONSTEXPRS, num_warps=tuning.row_num_warps(block),
    )
    return q, scale


_E4M3_CONSTEXPRS = {k: v for k, v in tuning.kv_format(E4M3).constexprs().items() if k != "FP8"}


def fp8_quantize_ref(x: torch.Tensor, static_scale: torch.Tensor | None = None,
                     min_scale: float = 1.0 / (E4M3_MAX * 512.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of `fp8_quantize`."""
    xf = x.float()
    if static_scale is None:
        amax = xf.abs().amax(dim=-1, keepdim=True)
        # a tensor divisor: CUDA torch divides by a Python scalar as a multiplication by its reciprocal, which is
        # not the kernel's IEEE division (div_rn) and differs in the last bit for some rows
        scale = (amax / amax.new_full((), E4M3_MAX)).clamp(min=min_scale)
    else:
        scale = static_scale.float()
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale
