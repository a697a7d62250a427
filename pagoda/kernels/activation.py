"""Gated and elementwise activations (Triton), with torch references.

Shapes: silu_and_mul / gelu_and_mul take x [..., 2 * I] (gate = x[..., :I], up = x[..., I:]) and
return [..., I]; gelu_tanh (a.k.a. gelu_new, gelu_pytorch_tanh) keeps the shape. The last dim must
be contiguous; leading dims may be strided. Math is in fp32, rounded once to x's dtype.
Invariant: inputs are never modified; outputs are new tensors of x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from pagoda.kernels import tuning

_SILU, _GELU, _GELU_TANH = 0, 1, 2  # ACT codes of the kernels


@triton.jit
def _tanh(x):
    # tanh(x) = 2 * sigmoid(2x) - 1, stable for large |x| in fp32.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 0:  # silu
        y = x / (1.0 + tl.exp(-x))
    elif ACT == 1:  # gelu (erf)
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    else:  # 2: gelu_tanh
        y = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return y


@triton.jit
def _act_and_mul_kernel(out_ptr, x_ptr, stride_x, stride_o, I, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    y = _act(gate, ACT) * up
    tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_kernel(out_ptr, x_ptr, stride_x, stride_o, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, _act(x, ACT).to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _act_and_mul(x: torch.Tensor, act: int) -> torch.Tensor:
    if x.shape[-1] % 2:
        raise ValueError(f"last dim {x.shape[-1]} must be even (gate and up halves)")
    inter = x.shape[-1] // 2
    x2 = _rows(x)
    out = torch.empty(*x.shape[:-1], inter, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, inter)
    if x2.shape[0] and inter:
        block = min(tuning.ELEMENTWISE_BLOCK, tuning.next_power_of_2(inter))
        grid = (x2.shape[0], triton.cdiv(inter, block))
        _act_and_mul_kernel[grid](out2, x2, x2.stride(0), out2.stride(0), inter, ACT=act, BLOCK=block,
                                  num_warps=4 if block >= 512 else 2)
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :I]) * x[..., I:]."""
    return _act_and_mul(x, _SILU)


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x[..., :I]) * x[..., I:]; approximate "none" (erf) or "tanh"."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _act_and_mul(x, _GELU if approximate == "none" else _GELU_TANH)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """Elementwise tanh-approximated GELU (HF gelu_new / gelu_pytorch_tanh)."""
    x2 = _rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, x.shape[-1])
    n = x.shape[-1]
    if x2.shape[0] and n:
        block = min(tuning.ELEMENTWISE_BLOCK, tuning.next_power_of_2(n))
        _act_kernel[(x2.shape[0], triton.cdiv(n, block))](out2, x2, x2.stride(0), out2.stride(0), n,
                                                          ACT=_GELU_TANH, BLOCK=block,
                                                          num_warps=4 if block >= 512 else 2)
    return out


gelu_new = gelu_tanh


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    i = x.shape[-1] // 2
    xf = x.float()
    return (F.silu(xf[..., :i]) * xf[..., i:]).to(x.dtype)


def gelu_and_mul_ref(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    i = x.shape[-1] // 2
    xf = x.float()
    return (F.gelu(xf[..., :i], approximate=approximate) * xf[..., i:]).to(x.dtype)


def gelu_tanh_ref(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float(), approximate="tanh").to(x.dtype)
