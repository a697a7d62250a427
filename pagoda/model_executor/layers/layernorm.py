"""Normalization layers: RMSNorm (with a fused residual-add form) and LayerNorm.

Invariants:
- `rms_norm` and `fused_add_rms_norm` are plain torch functions, the reference a Triton kernel
  may replace: statistics in fp32, the result cast back to the input dtype before the weight
  multiplies it (as Hugging Face does), so fp32 results match transformers exactly.
- On CUDA the fused Triton kernel (pagoda/kernels/rmsnorm.py) runs instead, updating `residual` in
  place; callers never reuse a residual tensor after passing it in.
- `RMSNorm(x)` returns the normed tensor; `RMSNorm(x, residual)` first adds `residual` and returns
  `(normed, x + residual)`: the sum is the next layer's residual. `forward_pending` may instead
  leave the norm to the next projection's GEMV (layers/pending_norm.py); the CPU path never does.
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.kernels.tuning import gemv_applies
from pagoda.model_executor.layers.linear import default_weight_loader, set_weight_attrs
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        set_weight_attrs(self.weight, {"weight_loader": default_weight_loader})

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.is_cuda:
            from pagoda.kernels.rmsnorm import rmsnorm  # fused Triton kernel; residual updated in place

            return rmsnorm(x, self.weight, self.eps, residual)
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return fused_add_rms_norm(x, residual, self.weight, self.eps)

    def forward_pending(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """(normed input, next residual) like `forward`, except that where the next projection runs
        the GEMV kernel (CUDA, at most GEMV_USE_MAX_M rows) the norm is left to it: the input is then a
        PendingRMSNorm (layers/pending_norm.py). Without a residual the next residual is x."""
        if not gemv_applies(x):
            return (self.forward(x), x) if residual is None else self.forward(x, residual)
        if residual is None:
            return PendingRMSNorm(x, self.weight, self.eps, None, None), x
        residual_out = torch.empty_like(residual)
        return PendingRMSNorm(x, self.weight, self.eps, residual, residual_out), residual_out


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm with weight loaders, parameters excluded from autograd."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__(hidden_size, eps=eps, elementwise_affine=elementwise_affine, bias=bias)
        for param in self.parameters(recurse=False):
            param.requires_grad_(False)
            set_weight_attrs(param, {"weight_loader": default_weight_loader})
