"""The FP8 activation quantization fused into the kernels that produce an FP8 layer's input (Triton): RMSNorm (+ the
residual add) -> FP8, for QKV and gate/up, and SiLU·mul -> FP8, for down_proj.

Unfused, a W8A8 layer's input is written in the model dtype by the RMSNorm or SiLU·mul kernel, read back by the
quantize kernel (fp8_quant.py), and written again as FP8: three passes and two launches. Here one program owns one
row, keeps it in registers (at most MAX_N values), and writes the FP8 values and the row's scale directly.

Math: bit for bit the unfused chain, so fusing never changes a result (tests/kernels/test_fp8_fused_quant.py):
- rmsnorm_fp8_quantize = fp8_quantize(rmsnorm(x, w, eps[, residual])): the normed row is rounded to the model dtype
  exactly as kernels/rmsnorm.py rounds it (x · rstd, rounded; times w, rounded), then quantized with dynamic
  per-token scales as fp8_quant.py (scale = max(amax / 448, min_scale) with IEEE division; x / scale rounded to
  nearest even on the e4m3 grid). With a residual, x + residual (rounded to the residual's dtype) goes to
  `residual_out` (PendingRMSNorm's contract), and the residual is not modified.
- silu_and_mul_fp8_quantize = fp8_quantize(silu_and_mul(x)): silu(gate) · up in fp32 (activation.py's _act), rounded
  to x's dtype, then quantized the same way.

Shapes: x [M, N] (unit stride in the last dim; rows may be strided), N <= MAX_N (`fits`); weight [N]; residual and
residual_out [M, N] contiguous; silu_and_mul takes x [M, 2I] and quantizes [M, I]. Returns (q [M, N or I]
float8_e4m3fn contiguous, scale [M, 1] fp32). Dynamic scales only (static input scales keep the unfused path).
Nothing here syncs with the host, so the kernels can be captured in CUDA graphs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.activation import _act
from pagoda.kernels.fp8_quant import _E4M3_CONSTEXPRS, E4M3, E4M3_MAX
from pagoda.kernels.kv_cache_write import quantize_fp8

MAX_N = 16384  # values of one row kept in registers (16 warps: 32 fp32 per thread, 64 with SiLU·mul's two halves)


def fits(n: int) -> bool:
    """Whether rows of n values (the quantized width) fit the fused kernels."""
    return 0 < n <= MAX_N


@triton.jit
def _quantize_row(y, mask, q_row, scale_ptr, row, min_scale, FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr,
                  FP8_MIN_NORMAL: tl.constexpr, FP8_MAGIC: tl.constexpr, offs):
    """Store row `row`'s dynamic scale and FP8 values of y (fp32 holding model-dtype values; masked lanes 0)."""
    scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(y), axis=0), FP8_MAX), min_scale)
    tl.store(scale_ptr + row, scale)
    q = quantize_fp8(tl.math.div_rn(y, scale), 1.0, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
    tl.store(q_row + offs, q.to(q_row.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_quant_kernel(
    q_ptr, scale_ptr, x_ptr, res_ptr, res_out_ptr, w_ptr, eps, min_scale,
    stride_x, stride_r, stride_ro, stride_q,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr, FP8_MAGIC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(res_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + offs, s, mask=mask)
        x = s.to(tl.float32)
    var = tl.sum(x * x, 0) / N
    rstd = 1.0 / tl.sqrt(var + eps)  # the RMSNorm kernel's expression: the same bits
    y = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (y * w).to(x_ptr.dtype.element_ty).to(tl.float32)
    _quantize_row(y, mask, q_ptr + row * stride_q, scale_ptr, row, min_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL,
                  FP8_MAGIC, offs)


@triton.jit
def _silu_mul_quant_kernel(
    q_ptr, scale_ptr, x_ptr, min_scale, stride_x, stride_q,
    I: tl.constexpr, BLOCK: tl.constexpr,
    FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr, FP8_MAGIC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < I
    x_row = x_ptr + row * stride_x
    gate = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + I + offs, mask=mask, other=0.0).to(tl.float32)
    y = (_act(gate, 0) * up).to(x_ptr.dtype.element_ty).to(tl.float32)
    _quantize_row(y, mask, q_ptr + row * stride_q, scale_ptr, row, min_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL,
                  FP8_MAGIC, offs)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} needs x [M, N], got {tuple(x.shape)}")
    return x if x.stride(1) == 1 else x.contiguous()


def _outputs(m: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(m, n, dtype=E4M3, device=device), torch.empty(m, 1, dtype=torch.float32, device=device)


def rmsnorm_fp8_quantize(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                         residual_out: torch.Tensor | None = None,
                         min_scale: float = 1.0 / (E4M3_MAX * 512.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) = fp8_quantize(rmsnorm(x (+ residual), weight, eps)); with a residual, residual_out <- x + residual.
    See the module docstring."""
    x = _rows(x, "rmsnorm_fp8_quantize")
    m, n = x.shape
    if not fits(n) or weight.shape != (n,):
        raise ValueError(f"rmsnorm_fp8_quantize: hidden size {n} (at most {MAX_N}) with weight {tuple(weight.shape)}")
    if residual is not None and (residual_out is None or residual.shape != x.shape or residual_out.shape != x.shape
                                 or residual.stride(1) != 1 or residual_out.stride(1) != 1):
        raise ValueError("a residual needs a residual_out, both shaped like x with unit stride in the last dim")
    q, scale = _outputs(m, n, x.device)
    if m:
        res, res_out = (residual, residual_out) if residual is not None else (x, x)
        block = tuning.next_power_of_2(n)
        _rmsnorm_quant_kernel[(m,)](
            q, scale, x, res, res_out, weight, float(eps), float(min_scale),
            x.stride(0), res.stride(0), res_out.stride(0), q.stride(0),
            N=n, BLOCK=block, HAS_RESIDUAL=residual is not None, **_E4M3_CONSTEXPRS,
            num_warps=tuning.row_num_warps(block),
        )
    return q, scale


def silu_and_mul_fp8_quantize(x: torch.Tensor, min_scale: float = 1.0 / (E4M3_MAX * 512.0)
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) = fp8_quantize(silu(x[:, :I]) · x[:, I:]) for x [M, 2I]. See the module docstring."""
    x = _rows(x, "silu_and_mul_fp8_quantize")
    m, two_i = x.shape
    inter = two_i // 2
    if two_i % 2 or not fits(inter):
        raise ValueError(f"silu_and_mul_fp8_quantize: last dim {two_i} must be even with halves of at most {MAX_N}")
    q, scale = _outputs(m, inter, x.device)
    if m:
        block = tuning.next_power_of_2(inter)
        _silu_mul_quant_kernel[(m,)](
            q, scale, x, float(min_scale), x.stride(0), q.stride(0),
            I=inter, BLOCK=block, **_E4M3_CONSTEXPRS, num_warps=tuning.row_num_warps(block),
        )
    return q, scale
