"""FP8 W8A8 skinny matmul for decode (Triton): y[M, N] = act((q_x · s_x) @ (q_w · s_w)ᵀ + bias), M <= GEMV_MAX_M.

At batch 1 an FP8 layer's product is the time to read its weight once, half the bytes of bf16; cuBLASLt's
scaled_mm on one row plus a separate quantization kernel per product does not get there. This kernel does the
whole FP8 linear layer in one launch (two with split-K): every program reads the M input rows (tiny, from L2)
and quantizes them in registers exactly as pagoda/kernels/fp8_quant.py does, then streams its FP8 weight tiles,
widened to fp32, against them.

Math (each step bit for bit fp8_quant's and fp8_utils', except where a sum is reordered):
- s_x[m]: dynamic, max(amax(|x[m]|) / 448, min_scale) with IEEE division (`div_rn`); static, the given scale.
  A max is exact in any order, so every program finds the same scale.
- q_x = round-to-nearest-even FP8 (e4m3) of clamp(x / s_x, ±448) (kv_cache_write.quantize_fp8, unit scale), fp32.
- y = (Σ_k q_x[m, k] · q_w[n, k]) · s_x[m] · s_w[n] (+ bias), in fp32, rounded once to x's dtype. Each product
  of two FP8 values is exact in fp32; against fp8_utils.fp8_linear_reference, which scales the factors before
  its dot product, only the fp32 rounding of the sums and scale products differs.
- `silu_and_mul`: w holds [gate | up] rows ([2I, K]; each row keeps its own scale s_w) and y = silu(g)·u [M, I]
  from the fp32 results g, u (bias included).
- `norm_weight` (+ `residual`): the input rows are RMSNorm(s) in the activation dtype, s = x, or s = x + residual
  rounded to the residual's dtype (written to `residual_out` by program (0, 0)), computed as
  kernels/rmsnorm.py does: rstd = 1 / sqrt(Σ s² / K + eps) from one [next_pow2(K)] vector reduced by tl.sum
  with rmsnorm's warp count (the same reduction tree, so the same rstd), n = round(round(s · rstd) · w)
  rounded to x's dtype, then quantized as above. Elementwise every step is the rmsnorm kernel's; the one
  order-dependent value is the sum of squares, taken in the rmsnorm kernel's shape and warp count
  (tests/kernels/bench_fp8_gemv.py checks q_x bit for bit against rmsnorm + fp8_quantize on the GPU;
  tuning.FP8_GEMV_FUSE_NORM=0 leaves the norm to the rmsnorm kernel if it ever differs).

Grid: (cdiv(N, BLOCK_N), SPLIT_K). With SPLIT_K > 1 each program covers one K range and writes its fp32 sums of
q_x·q_w (gate and up columns) to a [SPLIT_K, M, N_w] workspace and program (0, 0) the scales s_x to an [M]
buffer; a second kernel adds the partials in a fixed order, scales, biases, gates and casts. Every program
quantizes the whole rows (the scale needs the whole row), so split-K composes with the norm and the gate.

Shapes: x [M, K] with unit stride in K; weight [N_w, K] float8_e4m3fn contiguous; weight_scale [N_w, 1] (or [N_w])
fp32; static input_scale one fp32 value or None (dynamic); bias [N] (gated: [2I]) or None; y [M, N] in x's dtype.
Launch choices come from tuning.fp8_gemv_launch; they change speed, never results beyond fp32 summation order
(the norm form fixes its warp count, see above). No host syncs: CUDA-graph capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.gemv import split_k_ranges
from pagoda.kernels.kv_cache_write import quantize_fp8

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
MIN_SCALE = 1.0 / (E4M3_MAX * 512.0)  # fp8_utils.MIN_SCALE
_E4M3 = {k: v for k, v in tuning.kv_format(E4M3).constexprs().items() if k != "FP8"}


@triton.jit
def _norm_row(x_ptr, res_ptr, res_out_ptr, norm_w_ptr, m, M, eps, stride_xm, stride_rm, stride_om, writer,
              HAS_RES: tl.constexpr, HIDDEN: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """(rstd, amax of the normed row) of row m, as kernels/rmsnorm.py computes the norm (same ops, same shape);
    with a residual, the program whose `writer` is 0 stores the sum x + residual to res_out."""
    offs = tl.arange(0, ROW_BLOCK)
    mask = (offs < HIDDEN) & ((offs * 0 + m) < M)  # row m exists (M is a runtime value)
    x = tl.load(x_ptr + m * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + m * stride_rm + offs, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(res_ptr.dtype.element_ty)
        tl.store(res_out_ptr + m * stride_om + offs, s.to(res_out_ptr.dtype.element_ty),
                 mask=mask & ((offs * 0 + writer) == 0))
        x = s.to(tl.float32)
    var = tl.sum(x * x, 0) / HIDDEN
    rstd = 1.0 / tl.sqrt(var + eps)
    y = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(norm_w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    n = (y * w).to(x_ptr.dtype.element_ty).to(tl.float32)
    return rstd, tl.max(tl.abs(n), 0)


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, ws_ptr, xs_ptr, bias_ptr, y_ptr, partial_ptr, sx_out_ptr, q_out_ptr,
    res_ptr, res_out_ptr, norm_w_ptr, eps, min_scale,
    M, N, K, k_per_split,
    stride_xm, stride_wn, stride_ym, stride_rm, stride_om, stride_qm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROW_BLOCK: tl.constexpr,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, STATIC: tl.constexpr,
    NORM: tl.constexpr, HAS_RES: tl.constexpr, HIDDEN: tl.constexpr, WRITE_SX: tl.constexpr,
    WRITE_Q: tl.constexpr, NUM_STAGES: tl.constexpr,
    FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr, FP8_MAGIC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    # --- prologue: each row's scale (and rstd) over the whole row -------------------------------------
    rstd = tl.full((BLOCK_M,), 1.0, dtype=tl.float32)
    if NORM:
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        writer = pid_n + pid_k  # 0 for program (0, 0), the one that writes the new residual
        for m in tl.static_range(BLOCK_M):
            r_m, a_m = _norm_row(x_ptr, res_ptr, res_out_ptr, norm_w_ptr, m, M, eps, stride_xm, stride_rm,
                                 stride_om, writer, HAS_RES, HIDDEN, ROW_BLOCK)
            rstd = tl.where(offs_m == m, r_m, rstd)
            amax = tl.where(offs_m == m, a_m, amax)
    elif not STATIC:
        amax2 = tl.zeros((BLOCK_M, ROW_BLOCK), dtype=tl.float32)
        for k0 in range(0, K, ROW_BLOCK):
            offs = k0 + tl.arange(0, ROW_BLOCK)
            xk = tl.load(x_rows + offs[None, :], mask=m_mask[:, None] & (offs < K)[None, :], other=0.0)
            amax2 = tl.maximum(amax2, tl.abs(xk.to(tl.float32)))
        amax = tl.max(amax2, axis=1)
    if STATIC:
        sx = tl.zeros((BLOCK_M,), dtype=tl.float32) + tl.load(xs_ptr).to(tl.float32)
    else:
        sx = tl.maximum(tl.math.div_rn(amax, FP8_MAX), min_scale)
    if WRITE_SX:
        if (pid_n == 0) & (pid_k == 0):
            tl.store(sx_out_ptr + offs_m, sx, mask=m_mask)
    # --- main loop: quantize the x tile in registers, stream the FP8 weight tiles ---------------------
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    up_rows = w_ptr + (offs_n + N).to(tl.int64)[:, None] * stride_wn  # GATED: weight rows [gate | up]
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K) if GATED else (1, 1, 1), dtype=tl.float32)
    for k0 in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        x_mask = m_mask[:, None] & k_mask[None, :]
        x = tl.load(x_rows + offs_k[None, :], mask=x_mask, other=0.0).to(tl.float32)
        if NORM:  # the rmsnorm kernel's elementwise steps, with this row's rstd
            if HAS_RES:
                r = tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_k[None, :], mask=x_mask, other=0.0)
                x = (x + r.to(tl.float32)).to(res_ptr.dtype.element_ty).to(tl.float32)
            g = tl.load(norm_w_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            x = (x * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
            x = (x * g[None, :]).to(x_ptr.dtype.element_ty).to(tl.float32)
        q = quantize_fp8(tl.math.div_rn(x, sx[:, None]), 1.0, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
        if WRITE_Q:  # debug: the quantized rows, bit for bit what fp8_quantize stores
            if pid_n == 0:
                tl.store(q_out_ptr + offs_m[:, None] * stride_qm + offs_k[None, :],
                         q.to(q_out_ptr.dtype.element_ty), mask=x_mask)
        w_mask = n_mask[:, None] & k_mask[None, :]
        w = tl.load(w_rows + offs_k[None, :], mask=w_mask, other=0.0)
        acc += q[:, None, :] * w.to(tl.float32)[None, :, :]
        if GATED:
            u = tl.load(up_rows + offs_k[None, :], mask=w_mask, other=0.0)
            acc_up += q[:, None, :] * u.to(tl.float32)[None, :, :]
    out = tl.sum(acc, axis=2)  # [BLOCK_M, BLOCK_N]: Σ q_x · q_w
    mask = m_mask[:, None] & n_mask[None, :]
    n_w = 2 * N if GATED else N
    if SPLIT == 1:
        ws = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
        out = out * sx[:, None] * ws[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if GATED:
            up = tl.sum(acc_up, axis=2) * sx[:, None] * tl.load(ws_ptr + N + offs_n, mask=n_mask, other=0.0)[None, :]
            if HAS_BIAS:
                up += tl.load(bias_ptr + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            out = out / (1.0 + tl.exp(-out)) * up  # silu(gate) * up
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        dst = partial_ptr + (pid_k * M + offs_m[:, None]).to(tl.int64) * n_w + offs_n[None, :]
        tl.store(dst, out, mask=mask)
        if GATED:
            tl.store(dst + N, tl.sum(acc_up, axis=2), mask=mask)


@triton.jit
def _fp8_gemv_reduce_kernel(
    partial_ptr, sx_ptr, ws_ptr, bias_ptr, y_ptr, M, N, stride_ym,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr,
):
    m = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    n_w = 2 * N if GATED else N
    sx = tl.load(sx_ptr + m)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    up = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        row = partial_ptr + (s * M + m).to(tl.int64) * n_w
        total += tl.load(row + offs, mask=mask, other=0.0)
        if GATED:
            up += tl.load(row + N + offs, mask=mask, other=0.0)
    total = total * sx * tl.load(ws_ptr + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        total += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if GATED:
        up = up * sx * tl.load(ws_ptr + N + offs, mask=mask, other=0.0)
        if HAS_BIAS:
            up += tl.load(bias_ptr + N + offs, mask=mask, other=0.0).to(tl.float32)
        total = total / (1.0 + tl.exp(-total)) * up
    tl.store(y_ptr + m * stride_ym + offs, total.to(y_ptr.dtype.element_ty), mask=mask)


def _check(x, weight, weight_scale, input_scale, silu_and_mul, norm_weight, residual, residual_out):
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"fp8_gemv needs x [M, K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.dtype != E4M3 or not weight.is_contiguous():
        raise ValueError(f"fp8_gemv needs a contiguous float8_e4m3fn weight, got {weight.dtype}")
    if weight_scale.dtype != torch.float32 or weight_scale.numel() != weight.shape[0]:
        raise ValueError(f"weight_scale must be fp32 with one value per weight row ({weight.shape[0]}), "
                         f"got {weight_scale.dtype} {tuple(weight_scale.shape)}")
    if input_scale is not None and (input_scale.numel() != 1 or input_scale.dtype != torch.float32):
        raise ValueError(f"a static input scale is one fp32 value, got {input_scale.dtype} {tuple(input_scale.shape)}")
    if silu_and_mul and weight.shape[0] % 2:
        raise ValueError(f"silu_and_mul needs an even number of weight rows ([gate | up]), got {weight.shape[0]}")
    if x.shape[0] > tuning.GEMV_MAX_M:
        raise ValueError(f"fp8_gemv handles at most {tuning.GEMV_MAX_M} rows, got {x.shape[0]}")
    if norm_weight is not None and norm_weight.shape != (x.shape[1],):
        raise ValueError(f"norm_weight must be [{x.shape[1]}], got {tuple(norm_weight.shape)}")
    if residual is not None and (norm_weight is None or residual_out is None or residual.shape != x.shape
                                 or residual_out.shape != x.shape or residual.stride(1) != 1
                                 or residual_out.stride(1) != 1):
        raise ValueError("a residual needs norm_weight and a residual_out, both shaped like x with unit stride in K")


def fp8_gemv(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None = None,
             bias: torch.Tensor | None = None, launch: tuning.GemvLaunch | None = None, silu_and_mul: bool = False,
             norm_weight: torch.Tensor | None = None, eps: float = 1e-6, residual: torch.Tensor | None = None,
             residual_out: torch.Tensor | None = None, min_scale: float = MIN_SCALE,
             debug: dict | None = None) -> torch.Tensor:
    """act((q_x · s_x) @ (q_w · s_w)ᵀ + bias) → [M, N] in x's dtype, x quantized per token (or with the static
    `input_scale`) inside the kernel; see the module docstring. `launch` overrides the tuned choice. With
    `debug` (a dict) the kernel also stores the quantized rows and their scales: debug["q"] [M, K] e4m3 and
    debug["scale"] [M, 1] fp32, what fp8_quantize would return (for tests)."""
    _check(x, weight, weight_scale, input_scale, silu_and_mul, norm_weight, residual, residual_out)
    M, K = x.shape
    N = weight.shape[0] // 2 if silu_and_mul else weight.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    norm = norm_weight is not None
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if launch is None:
        launch = tuning.fp8_gemv_launch(M, N, K, gated=silu_and_mul, norm=norm)
    k_per_split, split = split_k_ranges(K, launch.split_k, launch.block_k)
    n_w = 2 * N if silu_and_mul else N
    partial = torch.empty(split, M, n_w, dtype=torch.float32, device=x.device) if split > 1 else y
    write_sx = split > 1 or debug is not None
    sx_out = torch.empty(M, 1, dtype=torch.float32, device=x.device) if write_sx else y
    q_out = torch.empty(M, K, dtype=E4M3, device=x.device) if debug is not None else y
    ws = weight_scale.reshape(-1)
    if not ws.is_contiguous():
        ws = ws.contiguous()
    bias_arg = bias if bias is not None else y
    res, res_out = (residual, residual_out) if residual is not None else (x, x)
    row_block = tuning.next_power_of_2(K) if norm else min(launch.block_k * 2, tuning.next_power_of_2(K))
    _fp8_gemv_kernel[(triton.cdiv(N, launch.block_n), split)](
        x, weight, ws, input_scale if input_scale is not None else ws, bias_arg, y, partial, sx_out, q_out,
        res, res_out, norm_weight if norm else x, float(eps), float(min_scale),
        M, N, K, k_per_split,
        x.stride(0), weight.stride(0), y.stride(0), res.stride(0), res_out.stride(0), q_out.stride(0),
        BLOCK_M=tuning.next_power_of_2(M), BLOCK_N=launch.block_n, BLOCK_K=launch.block_k, ROW_BLOCK=row_block,
        SPLIT=split, HAS_BIAS=bias is not None, GATED=silu_and_mul, STATIC=input_scale is not None,
        NORM=norm, HAS_RES=residual is not None, HIDDEN=K if norm else 0, WRITE_SX=write_sx,
        WRITE_Q=debug is not None, NUM_STAGES=launch.num_stages, **_E4M3, num_warps=launch.num_warps,
    )
    if split > 1:
        block = min(1024, tuning.next_power_of_2(N))
        _fp8_gemv_reduce_kernel[(triton.cdiv(N, block), M)](
            partial, sx_out, ws, bias_arg, y, M, N, y.stride(0),
            SPLIT=split, HAS_BIAS=bias is not None, GATED=silu_and_mul, BLOCK=block, num_warps=4,
        )
    if debug is not None:
        debug["q"], debug["scale"] = q_out, (sx_out if input_scale is None else input_scale)
    return y


def fp8_gemv_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                 input_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None, silu_and_mul: bool = False,
                 norm_weight: torch.Tensor | None = None, eps: float = 1e-6, residual: torch.Tensor | None = None,
                 min_scale: float = MIN_SCALE):
    """Torch reference: RMSNorm (+ residual) in x's dtype as rmsnorm_ref, the per-token (or static) quantization of
    fp8_quantize_ref, fp8_linear_reference's product in fp32 (+ bias), silu(gate)·up from the fp32 values, rounded
    once to x's dtype. Returns (y, q_x, s_x), with the new residual appended when `residual` is given."""
    from pagoda.kernels.fp8_quant import fp8_quantize_ref  # torch only; imports triton like this module
    from pagoda.kernels.rmsnorm import rmsnorm_ref

    s = None
    if norm_weight is not None:
        if residual is None:
            x = rmsnorm_ref(x, norm_weight, eps)
        else:
            x, s = rmsnorm_ref(x, norm_weight, eps, residual)
    q, scale = fp8_quantize_ref(x, input_scale, min_scale)
    y = (q.float() * scale) @ (weight.float() * weight_scale.reshape(-1, 1).float()).t()
    if bias is not None:
        y = y + bias.float()
    if silu_and_mul:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    out = (y.to(x.dtype), q, scale)
    return out if s is None else out + (s,)
