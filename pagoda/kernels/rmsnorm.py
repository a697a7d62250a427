"""RMSNorm and RMSNorm fused with the residual add (Triton), with torch references.

Shapes: x [..., hidden] (rows may be strided; the last dim must be contiguous), weight [hidden],
residual like x. Statistics are computed in fp32.

Semantics (Hugging Face Llama / vLLM fused_add_rms_norm):
- rmsnorm(x, w, eps) = w * (x * rsqrt(mean(x², -1) + eps)).to(x.dtype)
- rmsnorm(x, w, eps, residual) first sets residual <- (x + residual) rounded to the residual's dtype
  (in place), then normalises that rounded sum; returns (out, residual).
- rmsnorm(x, w, eps, residual, residual_out) writes that sum to residual_out instead (residual is only
  read); returns (out, residual_out). This saves the copy of residual into a fresh buffer that a
  caller keeping the old residual would otherwise launch first (PendingRMSNorm.materialize).
Invariant: `out` is a new tensor of x's dtype and shape; x is never modified.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning


@triton.jit
def _rmsnorm_kernel(
    out_ptr, x_ptr, residual_ptr, residual_out_ptr, weight_ptr, eps,
    stride_x, stride_r, stride_ro, stride_o,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_ro + offs, s, mask=mask)
        x = s.to(tl.float32)
    var = tl.sum(x * x, 0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (y * w).to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
            residual_out: torch.Tensor | None = None):
    """RMSNorm of x; with `residual`, returns (out, r) where r = x + residual was written to `residual_out`
    (same dtype and shape as residual) or, without one, into residual in place."""
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden size {hidden}")
    if residual_out is not None and residual is None:
        raise ValueError("residual_out needs a residual")
    x2 = x.reshape(-1, hidden)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, hidden)
    rows = x2.shape[0]
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        target = residual if residual_out is None else residual_out
        if target.shape != residual.shape or target.dtype != residual.dtype:
            raise ValueError(f"residual_out {tuple(target.shape)} {target.dtype} must match the residual: "
                             f"{tuple(residual.shape)} {residual.dtype}")
        r2 = residual.reshape(-1, hidden)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        t2 = target.view(-1, hidden) if target.is_contiguous() else None
        work = t2 if t2 is not None else torch.empty(r2.shape, dtype=target.dtype, device=target.device)
    else:
        r2 = work = x2  # unused
    if rows > 0:
        block = tuning.next_power_of_2(hidden)
        _rmsnorm_kernel[(rows,)](
            out2, x2, r2, work, weight, float(eps),
            x2.stride(0), r2.stride(0), work.stride(0), out2.stride(0),
            N=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None,
            num_warps=tuning.row_num_warps(block),
        )
    if residual is None:
        return out
    if work.data_ptr() != target.data_ptr():
        target.copy_(work.view(target.shape))
    return out, target


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """Torch reference (out of place for residual: returns (out, x + residual))."""
    if residual is not None:
        x = (x.float() + residual.float()).to(residual.dtype)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = (weight.float() * h.to(x.dtype).float()).to(x.dtype)
    return out if residual is None else (out, x)
