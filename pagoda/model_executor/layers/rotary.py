"""Rotary position embedding with a precomputed cos/sin cache indexed by positions.

Invariants:
- The cache is fp32, shape [max_position, rotary_dim] = [cos half | sin half], built once at
  construction; `forward` only gathers rows by position and casts to the query dtype.
- `apply_rotary_emb` is a plain torch function (the CPU path); on CUDA the Triton kernel in
  pagoda/kernels/rotary.py rotates q and k in place instead. Models that hand the rotary to the
  attention layer (Llama family) get it fused with the KV-cache write on the Triton backend
  (pagoda/kernels/rotary_kv.py); `forward` is then the unfused path other backends call.
  Neox layout rotates the two halves of the rotary dims; GPT-J layout rotates interleaved pairs.
  Only the first `rotary_dim` of each head's dims rotate (partial rotary); the rest pass through.
- Rope settings come from `rope_settings(hf_config)`, which reads transformers 5's
  `config.rope_parameters` and older configs' `rope_theta` / `rope_scaling` alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.kernels.rope_cache import SUPPORTED_ROPE_TYPES, build_cos_sin_cache



def rope_settings(hf_config: Any) -> dict:
    """{"rope_theta", "rope_type", scaling fields..., "partial_rotary_factor"} from either config spelling."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(hf_config, "rope_theta", None) or 10000.0
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    if "partial_rotary_factor" not in params:
        params["partial_rotary_factor"] = getattr(hf_config, "partial_rotary_factor", None) or 1.0
    return params


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox_style: bool) -> torch.Tensor:
    """Rotate x [T, H, rotary_dim] by cos/sin [T, 1, rotary_dim // 2]."""
    if is_neox_style:
        x1, x2 = x.chunk(2, dim=-1)
    else:
        x1, x2 = x[..., ::2], x[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if is_neox_style:
        return torch.cat((o1, o2), dim=-1)
    return torch.stack((o1, o2), dim=-1).flatten(-2)


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_size: int,
        rotary_dim: int,
        max_position: int,
        base: float,
        is_neox_style: bool = True,
        rope_params: dict | None = None,
    ):
        super().__init__()
        params = rope_params or {"rope_type": "default"}
        rope_type = params.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_scaling rope_type={rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}")
        if rotary_dim % 2 or rotary_dim > head_size:
            raise ValueError(f"rotary_dim={rotary_dim} must be even and at most head_size={head_size}")
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        cache = build_cos_sin_cache(base, rotary_dim, max_position, params)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate query [T, Hq·D] and key [T, Hk·D] (or [T, H, D]); returns them in their input shape."""
        if query.is_cuda:
            from pagoda.kernels.rotary import apply_rotary  # Triton, in place on (views of) the qkv buffer

            q3 = query.view(query.shape[0], -1, self.head_size)
            k3 = key.view(key.shape[0], -1, self.head_size)
            apply_rotary(positions, q3, k3, self.cos_sin_cache, self.is_neox_style, inplace=True)
            return query, key
        cos_sin = self.cos_sin_cache.index_select(0, positions)
        cos, sin = cos_sin.unsqueeze(1).to(query.dtype).chunk(2, dim=-1)
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(shape[0], -1, self.head_size)
        rot = apply_rotary_emb(x[..., : self.rotary_dim], cos, sin, self.is_neox_style)
        if self.rotary_dim < self.head_size:
            rot = torch.cat((rot, x[..., self.rotary_dim :]), dim=-1)
        return rot.reshape(shape)


def get_rope(head_size: int, max_position: int, hf_config: Any, is_neox_style: bool = True) -> RotaryEmbedding:
    """The rotary embedding `hf_config` asks for (theta, scaling, partial rotary)."""
    params = rope_settings(hf_config)
    rotary_dim = int(head_size * params["partial_rotary_factor"])
    return RotaryEmbedding(head_size, rotary_dim, max_position, float(params["rope_theta"]), is_neox_style, params)
