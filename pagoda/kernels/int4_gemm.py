"""Int4 weight-only GEMM for prefill-sized batches (Triton): y[M, N] = x[M, K] @ Wᵀ (+ bias), W in the int4
layout of int4_layout.py (AWQ and GPTQ repacked at load time), dequantized tile by tile in registers.

Each program computes a [BLOCK_M, BLOCK_N] tile of y. Per 128-input chunk it loads the packed weight once as a
[16, BLOCK_N] int32 tile (16 int32s of each output row, contiguous in memory) and, for each of the 8 nibble
planes (16 consecutive inputs, the layout's invariant), dequantizes [16, BLOCK_N] values and adds
tl.dot(x[:, plane] [BLOCK_M, 16], W_planeᵀ [16, BLOCK_N]) into an fp32 accumulator: every packed value is read
from memory once, and no lanes exchange nibbles.

Invariants:
- The dequantized tile is (q - zero) · scale computed in fp32 (exact: a 5-bit integer times the scale) and
  rounded once to x's dtype: the very weight the torch references (awq_utils / gptq_utils.dequantize) build,
  so results differ from theirs only by fp32 summation order. fp32 inputs use IEEE dots (not TF32).
- A plane lies in one group (the layout's G condition): its scales and zeros are one [1, BLOCK_N] row, loaded
  once per plane, or once per chunk when G is a multiple of 128.
- Launch choices (tiles, warps, stages) come from `tuning.int4_gemm_launch`; they change speed, never results
  beyond fp32 summation order.

Shapes: x [M, K] (unit stride in K); qweight [N, K / 8] int32, scales [N, K / G], zeros uint8 [N, K / G] or
None (8), contiguous; bias [N] or None; y [M, N] in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.int4_gemv import check_weights


@triton.jit
def _plane_params(s_ptr, z_ptr, offs, mask, HAS_ZEROS: tl.constexpr):
    """(scale, 2^23 + zero) rows [1, BN] in fp32 at element offsets `offs` [1, BN]."""
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        z = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.float32) + 8388608.0
    else:
        z = tl.zeros_like(s) + 8388616.0  # 2^23 + 8
    return s, z


@triton.jit
def _int4_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, y_ptr,
    M, N, K, group_size, stride_xm, stride_qn, stride_sn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_ZEROS: tl.constexpr, CHUNK_GROUPS: tl.constexpr,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    pid_m = tl.program_id(0)  # fastest: programs that run together share a column block (its weight in L2)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = tl.arange(0, 16)
    m_mask = offs_m < M
    n_mask = offs_n < N
    q_ptrs = qw_ptr + offs_n.to(tl.int64)[None, :] * stride_qn + offs_p[:, None]  # [16, BN]: chunk 0's int32s
    s_rows = offs_n.to(tl.int64)[None, :] * stride_sn  # [1, BN]
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_p[None, :]  # [BM, 16]: inputs 0..15
    qn_mask = n_mask[None, :]
    x_mask = m_mask[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in tl.range(0, K, 128, num_stages=NUM_STAGES):  # K % 128 == 0: no chunk is partial
        q = tl.load(q_ptrs + k0 // 8, mask=qn_mask, other=0)  # [16, BN] int32
        if CHUNK_GROUPS:  # G % 128 == 0: one group for the whole chunk
            s, z = _plane_params(s_ptr, z_ptr, s_rows + k0 // group_size, qn_mask, HAS_ZEROS)
        for i in tl.static_range(8):
            if not CHUNK_GROUPS:
                s, z = _plane_params(s_ptr, z_ptr, s_rows + (k0 + i * 16) // group_size, qn_mask, HAS_ZEROS)
            w = (((q >> (4 * i)) & 15) | 0x4B000000).to(tl.float32, bitcast=True)  # 2^23 + q
            w = ((w - z) * s).to(x_ptr.dtype.element_ty)  # [16, BN]: W[n, k0 + 16i + p]ᵀ
            x = tl.load(x_ptrs + (k0 + i * 16), mask=x_mask, other=0.0)  # [BM, 16]
            if IEEE:
                acc = tl.dot(x, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask)


def prepare_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 name: str) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(x with unit stride in K, the group size, an empty y [M, N] in x's dtype) for an int4 GEMM called `name`;
    ValueError when x is not [M, K] or the weight does not fit K."""
    if x.dim() != 2:
        raise ValueError(f"{name} needs x [M, K], got {tuple(x.shape)}")
    group = check_weights(qweight, scales, zeros, x.shape[1])
    if x.stride(1) != 1:
        x = x.contiguous()
    return x, group, torch.empty(x.shape[0], qweight.shape[0], dtype=x.dtype, device=x.device)


def int4_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
              bias: torch.Tensor | None = None, launch: tuning.Int4GemmLaunch | None = None) -> torch.Tensor:
    """x [M, K] @ Wᵀ (+ bias) -> [M, N] in x's dtype, W in the int4 layout (qweight [N, K / 8], scales and
    zeros [N, K / G]); `launch` overrides the tuned choice."""
    x, group, y = prepare_gemm(x, qweight, scales, zeros, "int4_gemm")
    (M, K), N = x.shape, y.shape[1]
    if M == 0 or N == 0:
        return y
    if launch is None:
        launch = tuning.int4_gemm_launch(M, N, K)
    _int4_gemm_kernel[(triton.cdiv(M, launch.block_m), triton.cdiv(N, launch.block_n))](
        x, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else y, y,
        M, N, K, group, x.stride(0), qweight.stride(0), scales.stride(0), y.stride(0),
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, HAS_ZEROS=zeros is not None,
        CHUNK_GROUPS=group % 128 == 0, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
        NUM_STAGES=launch.num_stages, num_warps=launch.num_warps,
    )
    return y
