"""Tensor-parallel rank and size as the model layers see them, and the collectives they call.

Invariants:
- Today the world is one process: `get_tp_rank()` is 0, `get_tp_size()` is 1, and every collective
  here is the identity. Layers already shard by (rank, size) through these functions, so real tensor
  parallelism (DESIGN §7) replaces this module's bodies, not the layers.
"""

from __future__ import annotations

import torch


def get_tp_rank() -> int:
    """This process's rank in its tensor-parallel group."""
    return 0


def get_tp_size() -> int:
    """How many processes a layer is split over."""
    return 1


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """Exact division; a remainder means the model cannot be split this way."""
    if numerator % denominator != 0:
        raise ValueError(f"{what}={numerator} is not divisible by tensor_parallel_size={denominator}")
    return numerator // denominator


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the tensor-parallel group (identity with one rank)."""
    if get_tp_size() == 1:
        return x
    raise NotImplementedError("tensor parallelism > 1 is not implemented yet")


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim` (identity with one rank)."""
    if get_tp_size() == 1:
        return x
    raise NotImplementedError("tensor parallelism > 1 is not implemented yet")
