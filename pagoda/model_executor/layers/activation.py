"""Activation functions of the MLP blocks.

Invariants:
- `silu_and_mul` is a plain torch function (the reference a Triton kernel may replace): its input's
  last dimension is [gate | up], two equal halves, and it returns silu(gate) · up.
- `get_act_fn(name)` maps a Hugging Face `hidden_act` / `activation_function` name to a module and
  raises ValueError naming the field for an unknown name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU as GPT-2 computes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from pagoda.kernels.activation import silu_and_mul as silu_and_mul_kernel

            return silu_and_mul_kernel(x)
        return silu_and_mul(x)


class NewGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_new(x)


class FastGELU(nn.Module):
    """GELU with torch's tanh approximation (`gelu_pytorch_tanh`, `gelu_fast`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": NewGELU,
    "gelu_fast": FastGELU,
    "gelu_pytorch_tanh": FastGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def get_act_fn(name: str, field_name: str = "hidden_act") -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"{field_name}={name!r} is not supported; supported: {sorted(_ACTIVATIONS)}") from None
