"""Int4 weight-only GEMV for decode (Triton): y[M, N] = x[M, K] @ Wᵀ (+ bias) for a handful of rows M (1..4),
with W in the int4 layout of int4_layout.py (AWQ and GPTQ repacked at load time), dequantized in registers.

At batch 1 the time of a product is the time to read its packed weight (half a byte per value) once; at 4.25
TB/s that leaves ~3.9 instructions per weight (132 SMs x 128 lanes x ~1.98 GHz), so the loop must be lean and
must never wait on a barrier. Each program streams [BLOCK_N rows, BLOCK_CH chunks, 16] int32 tiles of qweight
(whole 128-input chunks, 16-byte loads) against the M input rows:
- One register layout for everything in the loop (no convert_layout, no shared memory, no barrier): the
  weight tile takes the layout Triton's coalescing gives it (4 int32 per thread along the chunk); scales and
  zeros are loaded through pointers broadcast over the chunk's 16 int32s (same shape, so same layout; the
  load lowering issues one load per distinct address a thread holds); x's [1, BLOCK_CH, 16] plane loads have
  fewer elements than the program has threads, which Triton rematerializes in the weight's layout instead of
  converting. Launches keep BLOCK_CH * 16 < 32 * num_warps (tuning.int4_gemv_launch) for that reason.
- Nibble plane i of a chunk is 16 consecutive inputs (the layout's invariant), so the 8 planes are 8 masks
  of the same loaded int32s times 8 contiguous 16-wide slices of x; nibbles never move between lanes.
- A nibble becomes a float without shifts or conversions: for the nibble at bits [4j, 4j + 4) (j < 4; planes
  4..7 come from q >> 16, one shift per int32), (q | 0x4B000000) & (15 << 4j | 0x4B000000) is the fp32
  2^23 + v · 16^j (one AND per value), and one FMA by 16^-j (exact) minus (2^(23 - 4j) + zero) leaves v - zero
  exactly. x needs no scaling; the group size is a compile-time constant (no divisions).
- Each weight is dequantized once and used by every row of x: AND, subtract, then one FMA per row. Partial
  sums of a group are multiplied by its scale once (fp32 sums; W is never rounded to the model dtype, so
  results agree with the torch references to the dtype's precision, not bitwise).
- Expected sm_90 SASS of the loop (Triton 3.9 ahead-of-time build for GPUTarget("cuda", 90, 32), G = 128,
  no barrier, no shared memory): 5.2 instructions per weight at M = 1 (32 x 1024 tiles, 8 warps, 128
  registers: 2 programs per SM), 6.9 at M = 2 (170 registers), 12.3 at M = 4 (16 x 1024 tiles) — the old
  3-D/4-D kernel had 4.6 at M = 1 but 10 barriers and 24 layout conversions per iteration, 10.7 at M = 4.
- Measured on the H200 (session 19, docs/benchmarks.md): what decides the speed is keeping loads in flight, not
  the instruction count: pipelining the loop's loads over 2 stages with 64 x 256 tiles, 4 warps and K split
  4-8 ways made every Llama-3-8B product 1.5-2x faster than the 32 x 1024, 8-warp, 1-stage launch (32 layers at
  M = 1: 5.20 -> 2.59 ms, 33 % of HBM bandwidth on the quantized bytes).

Fused forms, with gemv.py's semantics (pagoda/kernels/gemv.py):
- `norm_weight` (+ `residual`): RMSNorm of x (+ residual) in the prologue; s = x + residual is rounded to
  the residual's dtype and written to `residual_out` by the programs of column block 0; rsqrt(mean(s²) + eps)
  scales the finished sums.
- `silu_and_mul`: W is [gate | up] ([2I, K] rows); a program's tile holds BLOCK_N / 2 gate rows and the
  matching up rows, and y = silu(x·gateᵀ)·(x·upᵀ) [M, I] comes from the fp32 sums.

Grid: (cdiv(N, rows per program), SPLIT_K). With SPLIT_K > 1 each program covers one K range (whole
iterations) and writes fp32 partial sums to a [SPLIT_K, M, N] workspace that gemv.py's reduce kernel adds up
in a fixed order (deterministic: CUDA-graph replays equal eager runs); the fused forms never split. Launch
choices come from `tuning.int4_gemv_launch`; they change speed, never results beyond fp32 summation order.

Shapes: x [M, K] (unit stride in K), M <= tuning.GEMV_MAX_M; qweight [N, K / 8] int32, scales [N, K / G],
zeros uint8 [N, K / G] or None (8), all contiguous; bias [N] or None; y [M, N] in x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import int4_layout, tuning
from pagoda.kernels.gemv import reduce_split_k, split_k_ranges

@triton.jit
def _zero_magic(z, j: tl.constexpr):
    """-(2^(23 - 4j) + zero): what `_nibble` adds for the nibble at bits [4j, 4j + 4)."""
    return -(z + float(1 << (23 - 4 * j)))


@triton.jit
def _nibble(qm, j: tl.constexpr, zc):
    """value - zero in fp32, exactly, for the nibble at bits [4j, 4j + 4) (j < 4) of q, given qm = q | 0x4B000000
    and zc = _zero_magic(zero, j): one AND keeps value · 16^j (< 2^23) in the mantissa of 2^23 (the exponent
    bits are in the mask), giving the fp32 2^23 + value · 16^j; one FMA scales it by 16^-j (exact: a power
    of two) and adds -(2^(23 - 4j) + zero), leaving the small integer value - zero (exact)."""
    return tl.fma((qm & ((15 << (4 * j)) | 0x4B000000)).to(tl.float32, bitcast=True), 1.0 / (1 << (4 * j)), zc)


@triton.jit
def _x_plane(x_ptr, res_ptr, res_out_ptr, norm_w_ptr, m: tl.constexpr, stride_xm, stride_rm, stride_om, kk, mask,
             write_res, sumsq, NORM: tl.constexpr, HAS_RES: tl.constexpr):
    """Row m of x at inputs kk [1, CH, 16] in fp32, with the RMSNorm prologue (NORM): x <- x + residual rounded
    as the RMSNorm kernel rounds it (written to residual_out where write_res), sumsq += x², x <- x · norm weight."""
    x = tl.load(x_ptr + m * stride_xm + kk, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        if HAS_RES:
            r = tl.load(res_ptr + m * stride_rm + kk, mask=mask, other=0.0).to(tl.float32)
            x = (x + r).to(res_ptr.dtype.element_ty).to(tl.float32)
            if write_res:
                tl.store(res_out_ptr + m * stride_om + kk, x.to(res_out_ptr.dtype.element_ty), mask=mask)
        sumsq += x * x
        x = x * tl.load(norm_w_ptr + kk, mask=mask, other=0.0).to(tl.float32)
    return x, sumsq


@triton.jit
def _row_sums(acc, sumsq, K, eps, NORM: tl.constexpr):
    """[rows] fp32 sums of one x row's accumulator (times its rsqrt(mean(x²) + eps) with NORM)."""
    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    if NORM:
        out = out / tl.sqrt(tl.sum(tl.sum(tl.sum(sumsq, axis=2), axis=1), axis=0) / K + eps)
    return out


@triton.jit
def _finish_row(out, m: tl.constexpr, y_ptr, partial_ptr, bias_ptr, pid_k, M, N, n0, stride_ym,
                HALF: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr):
    """Store row m's sums: bias and silu(gate) · up (GATED: out holds [gate rows | up rows]) into y, or the fp32
    partial sums (SPLIT > 1)."""
    if GATED:
        gate, up = tl.split(tl.permute(tl.reshape(out, (2, HALF)), (1, 0)))
        offs = n0 + tl.arange(0, HALF)
        mask = offs < N
        if HAS_BIAS:
            gate += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            up += tl.load(bias_ptr + N + offs, mask=mask, other=0.0).to(tl.float32)
        res = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(y_ptr + m * stride_ym + offs, res.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        offs = n0 + tl.arange(0, HALF)
        mask = offs < N
        if SPLIT == 1:
            if HAS_BIAS:
                out += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_ptr + m * stride_ym + offs, out.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(partial_ptr + (pid_k * M + m).to(tl.int64) * N + offs, out, mask=mask)


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, y_ptr, partial_ptr, res_ptr, res_out_ptr, norm_w_ptr, eps,
    M, N, K, k_per_split,
    stride_xm, stride_qn, stride_sn, stride_ym, stride_rm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_CH: tl.constexpr, GROUP_SIZE: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
    NORM: tl.constexpr, HAS_RES: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    # BLOCK_M == M (1..4): one accumulator per row of x, each weight dequantized once for all of them.
    PPG: tl.constexpr = 8 if GROUP_SIZE >= 128 else GROUP_SIZE // 16  # planes per group
    HALF: tl.constexpr = BLOCK_N // 2 if GATED else BLOCK_N  # output features per program
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n0 = pid_n * HALF
    r = tl.arange(0, BLOCK_N)
    if GATED:  # tile rows [gate rows n0..n0+HALF | the matching up rows]
        offs_n = n0 + (r % HALF)
        rows = offs_n + (r // HALF) * N
    else:
        offs_n = n0 + r
        rows = offs_n
    # Weight, scale and zero loads are unmasked: rows past N read row N - 1 (never stored) and chunks past the
    # K range read the last chunk, times x = 0 (x's loads are masked). Unmasked, a thread's scale and zero
    # loads of one (row, chunk) collapse into one load each.
    rows3 = tl.minimum(rows, N - 1 + (r // HALF) * N if GATED else N - 1).to(tl.int64)[:, None, None]
    c3 = tl.arange(0, BLOCK_CH)[None, :, None]
    p3 = tl.arange(0, 16)[None, None, :]
    q_ptrs = qw_ptr + rows3 * stride_qn + p3  # [BN, 1, 16] + chunk * 16
    s_rows = s_ptr + rows3 * stride_sn + p3 * 0  # broadcast over the chunk's 16 int32s: the weight's layout
    z_rows = z_ptr + rows3 * stride_sn + p3 * 0
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    write_res = pid_n == 0
    acc0 = tl.zeros((BLOCK_N, BLOCK_CH, 16), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, BLOCK_CH, 16) if BLOCK_M > 1 else (1, 1, 1), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_CH, 16) if BLOCK_M > 2 else (1, 1, 1), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, BLOCK_CH, 16) if BLOCK_M > 3 else (1, 1, 1), dtype=tl.float32)
    sq0 = tl.zeros((1, BLOCK_CH, 16) if NORM else (1, 1, 1), dtype=tl.float32)
    sq1 = tl.zeros((1, BLOCK_CH, 16) if NORM and BLOCK_M > 1 else (1, 1, 1), dtype=tl.float32)
    sq2 = tl.zeros((1, BLOCK_CH, 16) if NORM and BLOCK_M > 2 else (1, 1, 1), dtype=tl.float32)
    sq3 = tl.zeros((1, BLOCK_CH, 16) if NORM and BLOCK_M > 3 else (1, 1, 1), dtype=tl.float32)
    for k0 in tl.range(k_begin, k_end, BLOCK_CH * 128, num_stages=NUM_STAGES):
        ch = k0 // 128 + c3  # [1, CH, 1] chunks of this iteration (K % 128 == 0: a chunk is all in or out)
        c_mask = ch * 128 < k_end
        ch = tl.minimum(ch, K // 128 - 1)
        q = tl.load(q_ptrs + ch * 16)  # [BN, CH, 16] int32
        q_lo = q | 0x4B000000  # planes 0..3 at bits [0, 16), under fp32 2^23's exponent bits
        q_hi = (q >> 16) | 0x4B000000  # planes 4..7 (the sign bits shifted in are masked off by _nibble)
        x_mask = c_mask & (p3 < 16)
        for i in tl.static_range(8):
            if i % PPG == 0:  # a new group: its scales and zeros
                g = (ch * 128 + i * 16) // GROUP_SIZE  # a division by a constant
                s = tl.load(s_rows + g).to(tl.float32)
                if HAS_ZEROS:
                    z = tl.load(z_rows + g).to(tl.float32)
                else:
                    z = tl.zeros_like(s) + 8.0
                zc0 = _zero_magic(z, 0)
                zc1 = _zero_magic(z, 1)
                zc2 = _zero_magic(z, 2)
                zc3 = _zero_magic(z, 3)
            zc = zc0 if i % 4 == 0 else (zc1 if i % 4 == 1 else (zc2 if i % 4 == 2 else zc3))
            w = _nibble(q_lo if i < 4 else q_hi, i % 4, zc)  # [BN, CH, 16]: q - zero
            kk = ch * 128 + i * 16 + p3  # [1, CH, 16] inputs of plane i
            x0, sq0 = _x_plane(x_ptr, res_ptr, res_out_ptr, norm_w_ptr, 0, stride_xm, stride_rm, stride_om, kk,
                               x_mask, write_res, sq0, NORM, HAS_RES)
            prod0 = w * x0
            part0 = prod0 if i % PPG == 0 else part0 + prod0
            if BLOCK_M > 1:
                x1, sq1 = _x_plane(x_ptr, res_ptr, res_out_ptr, norm_w_ptr, 1, stride_xm, stride_rm, stride_om, kk,
                                   x_mask, write_res, sq1, NORM, HAS_RES)
                prod1 = w * x1
                part1 = prod1 if i % PPG == 0 else part1 + prod1
            if BLOCK_M > 2:
                x2, sq2 = _x_plane(x_ptr, res_ptr, res_out_ptr, norm_w_ptr, 2, stride_xm, stride_rm, stride_om, kk,
                                   x_mask, write_res, sq2, NORM, HAS_RES)
                prod2 = w * x2
                part2 = prod2 if i % PPG == 0 else part2 + prod2
            if BLOCK_M > 3:
                x3, sq3 = _x_plane(x_ptr, res_ptr, res_out_ptr, norm_w_ptr, 3, stride_xm, stride_rm, stride_om, kk,
                                   x_mask, write_res, sq3, NORM, HAS_RES)
                prod3 = w * x3
                part3 = prod3 if i % PPG == 0 else part3 + prod3
            if i % PPG == PPG - 1:  # the group is done: times its scale
                acc0 += part0 * s
                if BLOCK_M > 1:
                    acc1 += part1 * s
                if BLOCK_M > 2:
                    acc2 += part2 * s
                if BLOCK_M > 3:
                    acc3 += part3 * s
    _finish_row(_row_sums(acc0, sq0, K, eps, NORM), 0, y_ptr, partial_ptr, bias_ptr, pid_k, M, N, n0, stride_ym,
                HALF, SPLIT, HAS_BIAS, GATED)
    if BLOCK_M > 1:
        _finish_row(_row_sums(acc1, sq1, K, eps, NORM), 1, y_ptr, partial_ptr, bias_ptr, pid_k, M, N, n0,
                    stride_ym, HALF, SPLIT, HAS_BIAS, GATED)
    if BLOCK_M > 2:
        _finish_row(_row_sums(acc2, sq2, K, eps, NORM), 2, y_ptr, partial_ptr, bias_ptr, pid_k, M, N, n0,
                    stride_ym, HALF, SPLIT, HAS_BIAS, GATED)
    if BLOCK_M > 3:
        _finish_row(_row_sums(acc3, sq3, K, eps, NORM), 3, y_ptr, partial_ptr, bias_ptr, pid_k, M, N, n0,
                    stride_ym, HALF, SPLIT, HAS_BIAS, GATED)


def check_weights(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, k: int) -> int:
    """The group size of a weight in the int4 layout for K = k inputs; ValueError if the tensors do not fit it."""
    n = qweight.shape[0]
    if (qweight.dim() != 2 or qweight.dtype != torch.int32 or qweight.shape[1] * 8 != k or scales.dim() != 2
            or scales.shape[0] != n or scales.shape[1] == 0 or k % scales.shape[1]):
        raise ValueError(f"int4 weight: qweight {tuple(qweight.shape)} {qweight.dtype} and scales "
                         f"{tuple(scales.shape)} do not fit K={k} (need int32 [N, K / 8], scales [N, K / G])")
    group = k // scales.shape[1]
    if not int4_layout.supports(k, group):
        raise ValueError(f"int4 weight: K={k} with groups of {group} is outside the layout (see int4_layout.supports)")
    if zeros is not None and (zeros.shape != scales.shape or zeros.dtype != torch.uint8):
        raise ValueError(f"int4 weight: zeros must be uint8 shaped like scales {tuple(scales.shape)}")
    if not (qweight.is_contiguous() and scales.is_contiguous() and (zeros is None or zeros.is_contiguous())):
        raise ValueError("int4 weight: qweight, scales and zeros must be contiguous")
    return group


def int4_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
              bias: torch.Tensor | None = None, launch: tuning.Int4GemvLaunch | None = None,
              silu_and_mul: bool = False, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
              residual: torch.Tensor | None = None, residual_out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ Wᵀ (+ bias) -> [M, N] in x's dtype, W in the int4 layout (qweight [N, K / 8], scales and
    zeros [N, K / G]); `launch` overrides the tuned choice. `silu_and_mul`, `norm_weight`, `residual` and
    `residual_out` as gemv.gemv (see the module docstring)."""
    if x.dim() != 2:
        raise ValueError(f"int4_gemv needs x [M, K], got {tuple(x.shape)}")
    M, K = x.shape
    group = check_weights(qweight, scales, zeros, K)
    if silu_and_mul and qweight.shape[0] % 2:
        raise ValueError(f"silu_and_mul needs an even number of weight rows ([gate | up]), got {qweight.shape[0]}")
    N = qweight.shape[0] // 2 if silu_and_mul else qweight.shape[0]
    if M > tuning.GEMV_MAX_M:
        raise ValueError(f"int4_gemv handles at most {tuning.GEMV_MAX_M} rows, got {M}")
    if x.stride(1) != 1:
        x = x.contiguous()
    norm = norm_weight is not None
    if residual is not None and (not norm or residual_out is None or residual.shape != x.shape
                                 or residual_out.shape != x.shape or residual.stride(1) != 1 or residual_out.stride(1) != 1):
        raise ValueError("a residual needs norm_weight and a residual_out, both shaped like x with unit stride in K")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if launch is None:
        form = "gated" if silu_and_mul else ("norm" if norm else "plain")
        launch = tuning.int4_gemv_launch(M, N, K, form)
    if launch.block_k % int4_layout.CHUNK or launch.block_k & (launch.block_k - 1):
        raise ValueError(f"int4_gemv: block_k={launch.block_k} must be a power of two multiple of 128")
    k_per_split, split = split_k_ranges(K, 1 if (silu_and_mul or norm) else launch.split_k, launch.block_k)
    partial = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else y
    bias_arg = bias if bias is not None else y
    res, res_out = (residual, residual_out) if residual is not None else (x, x)
    per_program = launch.block_n // 2 if silu_and_mul else launch.block_n
    _int4_gemv_kernel[(triton.cdiv(N, per_program), split)](
        x, qweight, scales, zeros if zeros is not None else scales, bias_arg, y, partial, res, res_out,
        norm_weight if norm else x, float(eps),
        M, N, K, k_per_split,
        x.stride(0), qweight.stride(0), scales.stride(0), y.stride(0), res.stride(0), res_out.stride(0),
        BLOCK_M=M, BLOCK_N=launch.block_n, BLOCK_CH=launch.block_k // int4_layout.CHUNK,
        GROUP_SIZE=group, HAS_ZEROS=zeros is not None,
        SPLIT=split, HAS_BIAS=bias is not None, GATED=silu_and_mul, NORM=norm, HAS_RES=residual is not None,
        NUM_STAGES=launch.num_stages, num_warps=launch.num_warps,
    )
    if split > 1:
        reduce_split_k(partial, bias, y, split)
    return y
