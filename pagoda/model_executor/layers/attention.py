"""The attention layer: reshapes a layer's q/k/v and hands them to the AttentionBackend.

Invariants:
- The layer holds no cache and no forward state: the KV cache tensor and the metadata arrive as
  arguments on every call (DESIGN §4: no hidden global forward state).
- q is [T, num_heads·head_size], k and v are [T, num_kv_heads·head_size]; the output is
  [T, num_heads·head_size]. `layer_idx` says which entry of the model's kv_caches list is its own.
- Given a `rotary_emb`, q and k are rotated by it at `positions` inside the backend (which may fuse
  that with the KV-cache write), never before the call; q and k must not be read afterwards.
- `k_scale` and `v_scale` are the layer's FP8 KV-cache scales, Python floats (1.0 unless the checkpoint
  has them and kv_cache_dtype is FP8: models/utils.load_kv_cache_scales sets them after loading, before
  any step, so CUDA graphs capture their final values). Every call hands them to the backend.
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend, AttentionMetadata, RotaryArgs
from pagoda.model_executor.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        layer_idx: int,
        attn_backend: AttentionBackend,
    ):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.scale = scale
        self.layer_idx = layer_idx
        self.backend = attn_backend
        self.k_scale = 1.0
        self.v_scale = 1.0

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
        rotary_emb: RotaryEmbedding | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rotary = None
        if rotary_emb is not None:
            if positions is None:
                raise ValueError("positions are required with rotary_emb")
            rotary = RotaryArgs(positions, rotary_emb.cos_sin_cache, rotary_emb.is_neox_style, rotary_emb)
        num_tokens = q.shape[0]
        out = self.backend.forward(
            q.reshape(num_tokens, self.num_heads, self.head_size),
            k.reshape(num_tokens, self.num_kv_heads, self.head_size),
            v.reshape(num_tokens, self.num_kv_heads, self.head_size),
            kv_cache,
            attn_metadata,
            self.scale,
            rotary=rotary,
            k_scale=self.k_scale,
            v_scale=self.v_scale,
        )
        return out.reshape(num_tokens, self.num_heads * self.head_size)

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_size={self.head_size}, backend={self.backend.name}" + (
            f", k_scale={self.k_scale}, v_scale={self.v_scale}" if (self.k_scale, self.v_scale) != (1.0, 1.0) else "")
