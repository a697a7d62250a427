"""Int4 weight-only GEMM for small batches (Triton), operands swapped: yᵀ[N, M] = W[N, K] @ xᵀ[K, M], with W in the
int4 layout of int4_layout.py dequantized in registers as the dot's first operand and x (at most BLOCK_M rows,
zero-padded to a tensor-core tile of 16) as the second.

Why a second GEMM: int4_gemm.py puts x first ([BLOCK_M >= 16, 16] per plane) and runs eight 16-deep dots per
128-input chunk, so at decode batches of 3-16 rows each dot is tiny, the weight tile is staged per plane, and few
programs cover the SMs (N / BLOCK_N of them). Here a program dequantizes a whole [BLOCK_N, BLOCK_K] weight tile
(BLOCK_K / 128 chunks) and runs one BLOCK_K-deep dot against xᵀ [BLOCK_K, BLOCK_M]; K may be split over programs
(fp32 partial sums reduced in a fixed order by gemv.py's reduce kernel: deterministic, CUDA-graph safe), so the
weight streams through enough programs at any N. The output tile is [BLOCK_N, BLOCK_M], stored transposed.

The K order inside a tile: the layout's chunk c of a row is 16 int32s p = 0..15 whose nibble i holds input
128c + 16i + p. The kernel expands the loaded [BLOCK_N, CH * 16] int32 tile to [BLOCK_N, CH, 16, 8] (c, p, i) and
flattens it, so tile column c·128 + 8p + i holds input 128c + 16i + p; it loads xᵀ in that same order, and a dot
product does not depend on the order of its terms. No nibble moves between rows.

Invariants (as int4_gemm.py): the dequantized weight is (q - zero) · scale computed in fp32 (exact) and rounded
once to x's dtype, the weight the torch references build; fp32 inputs use IEEE dots. Launch choices
(tuning.int4_gemm_small_m_launch) change speed, never results beyond fp32 summation order.

Shapes: x [M, K] (unit stride in K), M <= BLOCK_M (tuning.INT4_SMALL_M_MAX); qweight [N, K / 8] int32, scales
[N, K / G], zeros uint8 [N, K / G] or None (8), contiguous; bias [N] or None; y [M, N] in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.gemv import reduce_split_k, split_k_ranges
from pagoda.kernels.int4_gemm import prepare_gemm


@triton.jit
def _int4_gemm_small_m_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, y_ptr, partial_ptr,
    M, N, K, k_per_split, stride_xm, stride_qn, stride_sn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_CH: tl.constexpr, GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    BLOCK_K: tl.constexpr = BLOCK_CH * 128
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)  # rows past N read row N - 1, never stored
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    # [BN, CH, 16, 8] index pieces: chunk c, int32 p, nibble i
    c4 = tl.arange(0, BLOCK_CH)[None, :, None, None]
    p4 = tl.arange(0, 16)[None, None, :, None]
    i4 = tl.arange(0, 8)[None, None, None, :]
    q_ptrs = qw_ptr + rows[:, None, None] * stride_qn + (tl.arange(0, BLOCK_CH)[None, :, None] * 16
                                                         + tl.arange(0, 16)[None, None, :])  # [BN, CH, 16]
    # the inputs of tile column c·128 + 8p + i, flattened like the weight tile
    k_tile = tl.reshape(c4 * 128 + i4 * 16 + p4 + tl.zeros((1, BLOCK_CH, 16, 8), tl.int32), (BLOCK_K,))
    x_ptrs = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm + k_tile[:, None]  # [BK, BM]: xᵀ
    if GROUP_SIZE >= 128:  # one group per chunk: [1, CH, 1, 1] offsets, scales [BN, CH, 1, 1]
        g_in = c4 * 128
    else:  # groups of 16 / 32 / 64 inputs: a group per (chunk, nibble plane): [1, CH, 1, 8]
        g_in = c4 * 128 + i4 * 16
    s_rows = s_ptr + rows[:, None, None, None] * stride_sn
    z_rows = z_ptr + rows[:, None, None, None] * stride_sn
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
        c_ok = (k0 + tl.arange(0, BLOCK_CH) * 128) < k_end  # chunks of this iteration inside the K range
        q = tl.load(q_ptrs + k0 // 8, mask=c_ok[None, :, None], other=0)  # [BN, CH, 16] int32
        v = (q[:, :, :, None] >> (i4 * 4)) & 15  # [BN, CH, 16, 8]
        w = (v | 0x4B000000).to(tl.float32, bitcast=True)  # 2^23 + v, exact
        g = (k0 + g_in) // GROUP_SIZE  # a division by a constant
        s = tl.load(s_rows + g, mask=c_ok[None, :, None, None], other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_rows + g, mask=c_ok[None, :, None, None], other=0).to(tl.float32) + 8388608.0
        else:
            z = tl.zeros_like(s) + 8388616.0  # 2^23 + 8
        w = ((w - z) * s).to(x_ptr.dtype.element_ty)  # (q - zero) · scale, rounded once
        w2 = tl.reshape(w, (BLOCK_N, BLOCK_K))
        k_ok = tl.reshape(tl.broadcast_to(c_ok[:, None, None], (BLOCK_CH, 16, 8)), (BLOCK_K,))
        xt = tl.load(x_ptrs + k0, mask=k_ok[:, None] & m_mask[None, :], other=0.0)  # [BK, BM]
        if IEEE:
            acc = tl.dot(w2, xt, acc, input_precision="ieee")
        else:
            acc = tl.dot(w2, xt, acc)
    out_mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(partial_ptr + (pid_k * M + offs_m[None, :]).to(tl.int64) * N + offs_n[:, None], acc, mask=out_mask)


def int4_gemm_small_m(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                      bias: torch.Tensor | None = None,
                      launch: tuning.Int4SmallMLaunch | None = None) -> torch.Tensor:
    """x [M, K] @ Wᵀ (+ bias) -> [M, N] in x's dtype for M <= tuning.INT4_SMALL_M_MAX, W in the int4 layout;
    `launch` overrides the tuned choice. See the module docstring."""
    x, group, y = prepare_gemm(x, qweight, scales, zeros, "int4_gemm_small_m")
    (M, K), N = x.shape, y.shape[1]
    if M > tuning.INT4_SMALL_M_MAX:
        raise ValueError(f"int4_gemm_small_m handles at most {tuning.INT4_SMALL_M_MAX} rows, got {M}")
    if M == 0 or N == 0:
        return y
    if launch is None:
        launch = tuning.int4_gemm_small_m_launch(M, N, K)
    block_k = launch.block_k
    if block_k % 128 or block_k & (block_k - 1):
        raise ValueError(f"int4_gemm_small_m: block_k={block_k} must be a power of two multiple of 128")
    k_per_split, split = split_k_ranges(K, launch.split_k, block_k)
    partial = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else y
    _int4_gemm_small_m_kernel[(triton.cdiv(N, launch.block_n), split)](
        x, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else y, y, partial,
        M, N, K, k_per_split, x.stride(0), qweight.stride(0), scales.stride(0), y.stride(0),
        BLOCK_M=max(16, tuning.next_power_of_2(M)), BLOCK_N=launch.block_n, BLOCK_CH=block_k // 128,
        GROUP_SIZE=group, HAS_ZEROS=zeros is not None, SPLIT=split, HAS_BIAS=bias is not None,
        IEEE=x.dtype == torch.float32, NUM_STAGES=launch.num_stages, num_warps=launch.num_warps,
    )
    if split > 1:
        reduce_split_k(partial, bias, y, split)
    return y
