"""An RMSNorm (with its residual add) left for the next linear layer to compute inside its matmul.

At decode batch 1 on the GPU each norm in front of a projection is a kernel launch of its own
(~2 µs plus a gap in the CUDA graph; 64 per Llama-3-8B step), while the GEMV kernel
(pagoda/kernels/gemv.py) can compute it in its prologue for free. `RMSNorm.forward_pending`
returns a PendingRMSNorm in exactly the cases where that kernel would run; a linear method that
cannot fuse it calls `materialize()`.

Invariants:
- A PendingRMSNorm is consumed once, by the layer it is handed to, before anything reads its
  `residual_out`; that fresh buffer then holds x + residual (rounded to the residual's dtype), the
  next residual, written either by the fused kernel or by `materialize()`.
- Without a residual (a model's first layer) the next residual is x itself and nothing is written.
- Only CUDA tensors are ever left pending (the norm is then the Triton kernel's, see kernels/rmsnorm.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PendingRMSNorm:
    x: torch.Tensor  # [T, hidden]: the sublayer output (or the embeddings)
    weight: torch.Tensor  # the norm's weight [hidden]
    eps: float
    residual: torch.Tensor | None  # added to x before the norm
    residual_out: torch.Tensor | None  # receives x + residual

    def gemv_args(self) -> dict:
        """The keyword arguments that make `gemv` compute this norm in its prologue."""
        return {"norm_weight": self.weight, "eps": self.eps, "residual": self.residual, "residual_out": self.residual_out}

    def materialize(self) -> torch.Tensor:
        """The normed tensor, computed by the RMSNorm kernel (filling residual_out)."""
        from pagoda.kernels.rmsnorm import rmsnorm

        if self.residual is None:
            return rmsnorm(self.x, self.weight, self.eps)
        out, _ = rmsnorm(self.x, self.weight, self.eps, self.residual, self.residual_out)
        return out
