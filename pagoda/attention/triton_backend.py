"""Triton attention backend (GPU): writes this step's K/V into the paged cache, then paged attention.

Invariant: same numerics contract as the torch reference backend (softmax in fp32 over each
request's cached prefix plus its own causal chunk); launch heuristics live in pagoda.kernels.tuning.
Slots < 0 in slot_mapping are padding (e.g. CUDA-graph padded decode batches) and are not written.
With `rotary`, one kernel (pagoda.kernels.rotary_kv) rotates query in place and writes the rotated
keys and the values into the cache; `key` itself is left unrotated, since attention reads keys only
from the cache.
"""

from __future__ import annotations

import torch

from pagoda.attention.backend import AttentionBackend, AttentionMetadata, RotaryArgs
from pagoda.kernels.kv_cache_write import write_kv_cache
from pagoda.kernels.paged_attention import paged_attention
from pagoda.kernels.rotary_kv import rotary_and_write_kv


class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        rotary: RotaryArgs | None = None,
    ) -> torch.Tensor:
        if rotary is None:
            write_kv_cache(kv_cache, key, value, metadata.slot_mapping)
        else:
            rotary_and_write_kv(rotary.positions, query, key, value, rotary.cos_sin_cache, kv_cache,
                                metadata.slot_mapping, rotary.is_neox)
        return paged_attention(query, kv_cache, metadata, scale, num_splits=metadata.num_splits)
