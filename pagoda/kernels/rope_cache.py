"""Rotary-embedding frequencies and the cos/sin cache, in plain torch (no Triton needed).

The single implementation shared by the model layers (pagoda/model_executor/layers/rotary.py) and the
Triton rotary kernel's tests.

Invariant: `rope_inv_freq` matches transformers' computation bit for bit (default, linear, llama3), and
the cache is fp32 [max_pos, rot_dim] = cat(cos(p * inv_freq), sin(p * inv_freq)).
"""

from __future__ import annotations

import math

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(base: float, rot_dim: int, rope_scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies [rot_dim // 2] (fp32), as transformers computes them (default, linear, llama3)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).to(dtype=torch.float) / rot_dim))
    if not rope_scaling:
        return inv_freq
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / rope_scaling["factor"]
    if rope_type != "llama3":
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported (default, linear, llama3)")
    factor = rope_scaling["factor"]
    low_freq_factor = rope_scaling["low_freq_factor"]
    high_freq_factor = rope_scaling["high_freq_factor"]
    old_context_len = rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def build_cos_sin_cache(
    base: float,
    rot_dim: int,
    max_pos: int,
    rope_scaling: dict | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """cos/sin cache [max_pos, rot_dim] = cat(cos(p * inv_freq), sin(p * inv_freq)), computed in fp32."""
    if rot_dim % 2:
        raise ValueError(f"rot_dim must be even, got {rot_dim}")
    inv_freq = rope_inv_freq(base, rot_dim, rope_scaling)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype=dtype, device=device)
