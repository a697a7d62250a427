"""Skinny matmul for decode (Triton): y[M, N] = x[M, K] @ w[N, K]ᵀ (+ bias) for a handful of rows M.

At batch 1 a decode step is a chain of matrix-vector products whose time is the time to read each
weight once. cuBLAS reads the narrow QKV and output projections of Llama-3-8B at 3.3 and 2.7 TB/s on
an H200; this kernel streams the weight in [BLOCK_N, BLOCK_K] tiles against the M input rows and
accumulates in fp32, reading them at 3.4 and 3.3 TB/s (tests/kernels/bench_gemv.py). Owning the
kernel also lets the layers around it fuse into it:
- `norm_weight` (+ `residual`): RMSNorm of x (+ residual) in the prologue. The sum s = x + residual
  is rounded to the residual's dtype as the RMSNorm kernel rounds it and written to `residual_out` by
  the programs of column block 0; the product is (s · norm_weight) @ wᵀ, and rsqrt(mean(s²) + eps),
  one factor per row, scales the finished fp32 sums.
- `silu_and_mul`: w is [gate | up] ([2I, K]); y = silu(x·gateᵀ)·(x·upᵀ) [M, I] from the fp32 sums.

Grid: (cdiv(N, BLOCK_N), SPLIT_K). With SPLIT_K > 1 each program covers one K range and writes fp32
partial sums to a [SPLIT_K, M, N] workspace that a second kernel adds up in a fixed order, casts and
biases; with SPLIT_K == 1 (always for the fused forms) the first kernel writes y itself.

Shapes: x [M, K] with unit stride in K; w [N, K] contiguous (nn.Linear's layout); bias [N] or None;
y [M, N] in x's dtype; residual and residual_out like x. Any float dtype; each output is rounded
once. Launch choices (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages) come from `tuning.gemv_launch`; they
change speed, never results beyond fp32 summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.tuning import gemv_applies  # noqa: F401  (re-exported; it lives in tuning so CPU code never imports triton)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, partial_ptr, res_ptr, res_out_ptr, norm_w_ptr, eps,
    M, N, K, k_per_split,
    stride_xm, stride_wn, stride_ym, stride_rm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
    NORM: tl.constexpr, HAS_RES: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    up_rows = w_ptr + (offs_n + N).to(tl.int64)[:, None] * stride_wn  # GATED: weight rows [gate | up]
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    # [BLOCK_M, BLOCK_N, BLOCK_K] partial products, summed over K once at the end, keep the loop
    # free of cross-lane reductions.
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K) if GATED else (1, 1, 1), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M, BLOCK_K) if NORM else (1, 1), dtype=tl.float32)
    for k0 in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        w_mask = n_mask[:, None] & k_mask[None, :]
        x_mask = m_mask[:, None] & k_mask[None, :]
        x = tl.load(x_rows + offs_k[None, :], mask=x_mask, other=0.0).to(tl.float32)
        if NORM:  # x <- (x + residual) rounded as the RMSNorm kernel rounds it, times the norm weight
            if HAS_RES:
                r = tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_k[None, :], mask=x_mask, other=0.0)
                x = (x + r.to(tl.float32)).to(res_ptr.dtype.element_ty).to(tl.float32)
                if pid_n == 0:  # one program writes the new residual
                    tl.store(res_out_ptr + offs_m[:, None] * stride_om + offs_k[None, :],
                             x.to(res_out_ptr.dtype.element_ty), mask=x_mask)
            sumsq += x * x
            x = x * tl.load(norm_w_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)[None, :]
        w = tl.load(w_rows + offs_k[None, :], mask=w_mask, other=0.0)
        acc += x[:, None, :] * w.to(tl.float32)[None, :, :]
        if GATED:
            u = tl.load(up_rows + offs_k[None, :], mask=w_mask, other=0.0)
            acc_up += x[:, None, :] * u.to(tl.float32)[None, :, :]
    out = tl.sum(acc, axis=2)  # [BLOCK_M, BLOCK_N]
    mask = m_mask[:, None] & n_mask[None, :]
    if NORM:  # rsqrt(mean(x²) + eps) is one factor per row: applied to the finished sums
        rstd = 1.0 / tl.sqrt(tl.sum(sumsq, axis=1) / K + eps)
        out = out * rstd[:, None]
        acc_up = acc_up * rstd[:, None, None]
    if SPLIT == 1:
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if GATED:
            up = tl.sum(acc_up, axis=2)
            if HAS_BIAS:
                up += tl.load(bias_ptr + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            out = out / (1.0 + tl.exp(-out)) * up  # silu(gate) * up
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        dst = partial_ptr + (pid_k * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
        tl.store(dst, out, mask=mask)


@triton.jit
def _gemv_reduce_kernel(
    partial_ptr, bias_ptr, y_ptr, M, N, stride_ym,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    m = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        total += tl.load(partial_ptr + (s * M + m).to(tl.int64) * N + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        total += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs, total.to(y_ptr.dtype.element_ty), mask=mask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         launch: tuning.GemvLaunch | None = None, silu_and_mul: bool = False,
         norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
         residual: torch.Tensor | None = None, residual_out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]ᵀ (+ bias) → [M, N] in x's dtype; `launch` overrides the tuned choice.
    With `silu_and_mul`, weight holds [gate | up] rows (N = 2·I) and the result is
    silu(x @ gateᵀ) · (x @ upᵀ), [M, I], from the fp32 sums.
    With `norm_weight`, the input is RMSNorm(s) with s = x, or s = x + residual rounded to the
    residual's dtype when `residual` is given (s is then written to `residual_out`):
    (s · norm_weight) @ weightᵀ · rsqrt(mean(s²) + eps). Fused forms are never split over K."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv needs x [M, K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    if silu_and_mul and weight.shape[0] % 2:
        raise ValueError(f"silu_and_mul needs an even number of weight rows ([gate | up]), got {weight.shape[0]}")
    M, K = x.shape
    N = weight.shape[0] // 2 if silu_and_mul else weight.shape[0]
    if M > tuning.GEMV_MAX_M:
        raise ValueError(f"gemv handles at most {tuning.GEMV_MAX_M} rows, got {M}")
    if x.stride(1) != 1:
        x = x.contiguous()
    norm = norm_weight is not None
    if residual is not None and (not norm or residual_out is None or residual.shape != x.shape
                                 or residual_out.shape != x.shape or residual.stride(1) != 1 or residual_out.stride(1) != 1):
        raise ValueError("a residual needs norm_weight and a residual_out, both shaped like x with unit stride in K")
    if not weight.is_contiguous():
        raise ValueError("gemv needs a contiguous weight")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if launch is None:
        launch = tuning.gemv_launch(M, N, K)
    k_per_split, split = split_k_ranges(K, 1 if (silu_and_mul or norm) else launch.split_k, launch.block_k)
    partial = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else y
    bias_arg = bias if bias is not None else y
    res, res_out = (residual, residual_out) if residual is not None else (x, x)
    _gemv_kernel[(triton.cdiv(N, launch.block_n), split)](
        x, weight, bias_arg, y, partial, res, res_out, norm_weight if norm else x, float(eps),
        M, N, K, k_per_split,
        x.stride(0), weight.stride(0), y.stride(0), res.stride(0), res_out.stride(0),
        BLOCK_M=tuning.next_power_of_2(M), BLOCK_N=launch.block_n, BLOCK_K=launch.block_k,
        SPLIT=split, HAS_BIAS=bias is not None, GATED=silu_and_mul, NORM=norm, HAS_RES=residual is not None,
        NUM_STAGES=launch.num_stages, num_warps=launch.num_warps,
    )
    if split > 1:
        reduce_split_k(partial, bias, y, split)
    return y


def split_k_ranges(k: int, split_k: int, block_k: int) -> tuple[int, int]:
    """(inputs per K range, ranges) for splitting K inputs about `split_k` ways in whole iterations of `block_k`
    inputs, with no empty range (the split-K GEMVs and the small-batch int4 GEMM)."""
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    return k_per_split, triton.cdiv(k, k_per_split)


def reduce_split_k(partial: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, split: int) -> None:
    """y[M, N] = sum over the `split` fp32 partial sums [split, M, N] (in a fixed order) + bias, cast to y's dtype
    (the second kernel of a split-K GEMV; int4_gemv uses it too)."""
    M, N = y.shape
    block = min(1024, tuning.next_power_of_2(N))
    _gemv_reduce_kernel[(triton.cdiv(N, block), M)](
        partial, bias if bias is not None else y, y, M, N, y.stride(0),
        SPLIT=split, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4,
    )


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             silu_and_mul: bool = False, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Torch reference: the product (and norm, gate) in fp32, rounded once to x's dtype; with a
    residual, returns (y, x + residual)."""
    s = x if residual is None else (x.float() + residual.float()).to(residual.dtype)
    if norm_weight is None:
        y = x.float() @ weight.float().t()
    else:
        sf = s.float()
        rstd = torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)
        y = ((sf * norm_weight.float()) @ weight.float().t()) * rstd
    if bias is not None:
        y = y + bias.float()
    if silu_and_mul:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y.to(x.dtype) if residual is None else (y.to(x.dtype), s)
