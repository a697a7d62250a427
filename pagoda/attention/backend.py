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
- The cache's dtype is the model's, or FP8 (kv_cache_dtype "fp8"/"fp8_e4m3": float8_e4m3fn, "fp8_e5m2":
  float8_e5m2). An FP8 cache holds keys / k_scale and values / v_scale (the layer's per-tensor scales,
  floats fixed after loading), clamped to the format's range and rounded to nearest even
  (pagoda.kernels.tuning.quantize_kv), and attention reads them back times the scale. A cache in the
  model's dtype ignores the scales.

Invariants:
- Metadata tensors live on the model's device; the `*_cpu` lists mirror them for host code, exactly
  for a backend with `needs_host_lengths`, else `seq_lens_cpu` and `max_seq_len` may be upper bounds.
- Launch choices that must not depend on a step's actual lengths belong to the backend: every
  AttentionMetadata of a model runner (eager steps, CUDA-graph capture, warm-up) is made by the
  runner's AttentionMetadataBuilder, which asks the backend for the split-KV count of a decode-only
  batch of n requests from the batch bucket of n and max_model_len only (`decode_num_splits`), once
  per n. So a graph captured at bucket size s and an eager decode of any n in that bucket reduce in
  the same order, and bf16 results are bitwise identical with graphs on and off.
- `prefix_blocks` (int32 [1] on the device, or None) asks for cascade attention: every request of the step
  holds the same first P = prefix_blocks[0] blocks, and every query sits after them (attention/cascade.py
  decides; only a backend with `supports_cascade` gets it). The result is the same attention up to fp32
  rounding; P may be 0 (a CUDA graph whose step shares nothing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
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
    # Split-KV count for decode steps, fixed by AttentionMetadataBuilder from the (bucketed) batch
    # size so that eager and CUDA-graph runs reduce in the same order; None lets the kernel choose.
    num_splits: int | None = None
    # Cascade attention: the number of leading blocks all requests share (see the module docstring).
    prefix_blocks: torch.Tensor | None = None

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
    # Whether `forward` reads the exact lengths from the host lists (`seq_lens_cpu`). A backend that does not
    # takes upper bounds there (and in max_seq_len), so a runner may correct lengths on the device without
    # waiting for it (async scheduling with speculative decoding).
    needs_host_lengths: bool = False
    # Whether `forward` runs cascade attention for metadata with prefix_blocks (attention/cascade.py).
    supports_cascade: bool = False

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
        k_scale: float = 1.0,  # an FP8 cache stores key / k_scale (see the module docstring)
        v_scale: float = 1.0,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
        ...

    def decode_num_splits(self, *, num_reqs: int, max_seq_len: int, num_heads: int, num_kv_heads: int,
                          head_size: int, device: torch.device) -> int | None:
        """Split-KV count for a decode-only batch padded to `num_reqs` requests, for sequences of up
        to `max_seq_len` (a host-side choice on ints, never on a step's lengths); None: the backend
        does not split (the default)."""
        return None

    def metadata_builder(self, *, batch_buckets: Sequence[int], max_model_len: int, num_heads: int,
                         num_kv_heads: int, head_size: int, device: torch.device) -> "AttentionMetadataBuilder":
        """The builder every AttentionMetadata of one model runner comes from (see the module docstring)."""
        return AttentionMetadataBuilder(self, batch_buckets=batch_buckets, max_model_len=max_model_len,
                                        num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size,
                                        device=device)


class AttentionMetadataBuilder:
    """Makes a step's AttentionMetadata with the backend's launch choices filled in.

    A decode-only batch (max_query_len == 1) of n requests gets `num_splits` = the backend's
    `decode_num_splits` for the smallest of `batch_buckets` >= n (n itself past the largest) and
    max_model_len; the count is computed once per n and cached (no per-step recomputation).
    """

    def __init__(self, backend: AttentionBackend, *, batch_buckets: Sequence[int], max_model_len: int,
                 num_heads: int, num_kv_heads: int, head_size: int, device: torch.device) -> None:
        self.backend = backend
        self.needs_host_lengths = backend.needs_host_lengths
        self.supports_cascade = backend.supports_cascade
        self.batch_buckets = sorted(batch_buckets)
        self.max_model_len = max_model_len
        self.num_heads, self.num_kv_heads, self.head_size = num_heads, num_kv_heads, head_size
        self.device = device
        self._decode_splits: dict[int, int | None] = {}  # decode batch size -> split-KV count

    def decode_splits(self, num_reqs: int) -> int | None:
        """Split-KV count of a decode step of `num_reqs` requests: decided by the bucket the batch
        falls in and max_model_len, never by the step's actual lengths."""
        if num_reqs not in self._decode_splits:
            size = next((s for s in self.batch_buckets if s >= num_reqs), num_reqs)
            self._decode_splits[num_reqs] = self.backend.decode_num_splits(
                num_reqs=size, max_seq_len=self.max_model_len, num_heads=self.num_heads,
                num_kv_heads=self.num_kv_heads, head_size=self.head_size, device=self.device)
        return self._decode_splits[num_reqs]

    def build(self, *, num_reqs: int, num_tokens: int, max_query_len: int, max_seq_len: int,
              query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
              slot_mapping: torch.Tensor, query_start_loc_cpu: list[int], seq_lens_cpu: list[int],
              prefix_blocks: torch.Tensor | None = None) -> AttentionMetadata:
        if prefix_blocks is not None and not self.supports_cascade:
            raise ValueError(f"the {self.backend.name} attention backend does not run cascade attention")
        return AttentionMetadata(
            num_reqs=num_reqs, num_tokens=num_tokens, max_query_len=max_query_len, max_seq_len=max_seq_len,
            query_start_loc=query_start_loc, seq_lens=seq_lens, block_tables=block_tables,
            slot_mapping=slot_mapping, query_start_loc_cpu=query_start_loc_cpu, seq_lens_cpu=seq_lens_cpu,
            num_splits=self.decode_splits(num_reqs) if max_query_len == 1 else None, prefix_blocks=prefix_blocks,
        )

    def cascade_prefix_blocks(self, common_blocks: int, block_size: int, *, num_reqs: int, num_tokens: int) -> int:
        """How many of the step's `common_blocks` shared leading blocks to attend in one cascade pass: all of
        them when attention/cascade.py's cost model says it pays, else 0."""
        from pagoda.attention.cascade import use_cascade

        if not self.supports_cascade or common_blocks == 0:
            return 0
        sms = self._sms()
        go = use_cascade(prefix_tokens=common_blocks * block_size, num_reqs=num_reqs, num_tokens=num_tokens,
                         num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, num_sms=sms)
        return common_blocks if go else 0

    def _sms(self) -> int:
        from pagoda.kernels import tuning

        if not hasattr(self, "_num_sms"):
            self._num_sms = tuning.sm_count(self.device.index) if self.device.type == "cuda" else tuning.DEFAULT_SM_COUNT
        return self._num_sms


ATTENTION_BACKEND_ENV = "PAGODA_ATTENTION_BACKEND"  # auto (default), triton or torch (as VLLM_ATTENTION_BACKEND)
ATTENTION_BACKENDS = ("auto", "triton", "torch")


def get_attention_backend(device: str) -> AttentionBackend:
    """The fastest backend available for `device` (torch reference on CPU), or the one PAGODA_ATTENTION_BACKEND
    names: `triton` off CUDA runs the kernels through Triton's interpreter (TRITON_INTERPRET=1; tests)."""
    import os

    choice = os.environ.get(ATTENTION_BACKEND_ENV, "auto").lower()
    if choice not in ATTENTION_BACKENDS:
        raise ValueError(f"{ATTENTION_BACKEND_ENV} must be one of {list(ATTENTION_BACKENDS)}, got {choice!r}")
    if choice == "triton":
        if device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"{ATTENTION_BACKEND_ENV}=triton on {device} needs TRITON_INTERPRET=1 (Triton's interpreter)")
        from pagoda.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    if choice == "auto" and device == "cuda":
        try:
            from pagoda.attention.triton_backend import TritonAttentionBackend
        except ImportError:
            pass
        else:
            return TritonAttentionBackend()
    from pagoda.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend()
