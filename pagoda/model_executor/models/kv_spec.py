"""What a model needs from the KV cache: one [2, blocks, block_size, kv_heads, head_size] tensor per layer.

Invariant: `num_kv_heads` is this tensor-parallel rank's count (the cache holds only its own heads).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_size: int

    def bytes_per_block(self, block_size: int, dtype_size: int) -> int:
        """Bytes of one block across all layers (keys and values)."""
        return 2 * self.num_layers * block_size * self.num_kv_heads * self.head_size * dtype_size
