"""The attention backend interface: one flat batch of tokens from many requests over a paged KV cache.

Layout and conventions every backend shares (the Triton kernels use exactly these):
- KV cache of one layer: a tensor of shape [2, num_blocks, block_size, num_kv_heads, head_size];
  index 0 holds keys, 1 values. Block b, offset o is "slot" b * block_size + o.
- A step's tokens are flat: request i owns query rows query_start_loc[i] : query_start_loc[i + 1].
  Its sequence after this step has seq_lens[i] tokens, so its queries sit at positions
  seq_lens[i] - query_len + j and attend causally to every cached position up to their own.
  Prefill chunks (query_len > 1) and decodes (query_len == 1) mix freely in one batch.
- block_tables[i, k] is the block holding positions k * block_size ... of request i; entries past
  the request's last block are unspecified (padding).
- `forward` first writes this step's keys and values at slot_mapping, then attends: so a request
  may read blocks that another request of the same step wrote (prefix sharing within a step).
- With `rotary` given, `forward` first rotates query and key by `rotary.positions` (the cache then
  holds rotated keys), so a backend may fuse rotary with the KV write. It may do so in place: the
  caller must not read query or key after `forward` (whether they were rotated is unspecified).

Invariant: metadata tensors live on the model's device; the `*_cpu` lists mirror them for host code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    num_reqs: int
    num_tokens: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]
    seq_lens: torch.Tensor  # int32 [num_reqs]
    block_tables: torch.Tensor  # int32 [num_reqs, max_blocks_per_req]
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    # Split-KV count for decode steps, fixed by the runner from the (bucketed) batch size so that
    # eager and CUDA-graph runs reduce in the same order; None lets the backend choose.
    num_splits: int | None = None

    @property
    def is_all_decode(self) -> bool:
        return self.max_query_len == 1


@dataclass(frozen=True)
class RotaryArgs:
    """Rotary position embedding for the backend to apply to query and key before attention."""

    positions: torch.Tensor  # int64 [num_tokens]
    cos_sin_cache: torch.Tensor  # fp32 [max_position, rotary_dim] = [cos half | sin half]; rotary_dim <= head_size
    is_neox: bool  # neox (rotate halves) or gptj (rotate interleaved pairs) layout
    # The model's own unfused rotary, (positions, query, key) -> (query, key): backends without a
    # fused kernel call it, so their numerics are exactly the model's.
    rotate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class AttentionBackend(ABC):
    """Computes attention for all layers; one instance per model runner."""

    name: str = "abstract"

    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_size: int) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_size]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_size]
        metadata: AttentionMetadata,
        scale: float,
        rotary: RotaryArgs | None = None,  # rotate query and key first (see the module docstring)
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
        ...


def get_attention_backend(device: str) -> AttentionBackend:
    """The fastest backend available for `device` (torch reference on CPU)."""
    if device == "cuda":
        try:
            from pagoda.attention.triton_backend import TritonAttentionBackend
        except ImportError:
            pass
        else:
            return TritonAttentionBackend()
    from pagoda.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend()
