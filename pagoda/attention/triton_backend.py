"""Triton attention backend (GPU): writes this step's K/V into the paged cache, then paged attention.

Invariant: same numerics contract as the torch reference backend (softmax in fp32 over each
request's cached prefix plus its own causal chunk); launch heuristics live in pagoda.kernels.tuning.
The split-KV count of a decode step comes with the metadata (`decode_num_splits`, asked by the
runner's AttentionMetadataBuilder: tuning.attention_launch for the batch bucket and max_model_len),
so eager and CUDA-graph runs of a batch split alike; None (off CUDA) lets the kernel choose.
Slots < 0 in slot_mapping are padding (e.g. CUDA-graph padded decode batches) and are not written.
Decode-only batches (one new token per request) of at most tuning.FUSED_DECODE_MAX_REQS requests run
one kernel, pagoda.kernels.decode_attention, that rotates, writes the KV cache, attends and reduces its
splits (the choice depends on the request count only, so eager and CUDA-graph runs agree). Other
batches run the KV write (with `rotary`: pagoda.kernels.rotary_kv, which rotates query in place and
writes the rotated keys and the values; `key` itself stays unrotated, since attention reads keys only
from the cache), then pagoda.kernels.paged_attention.
Metadata with `prefix_blocks` (cascade attention, attention/cascade.py) never takes the one-kernel decode:
after the KV write, pagoda.kernels.cascade_attention.prefix_attention attends every query row to the P
shared blocks of request 0's block-table row, and paged_attention resumes each request from that state
over its own blocks (P == 0: exactly the plain paged attention, plus a prefix launch that reads nothing).
The layer's k_scale / v_scale go to every kernel: an FP8 cache is written quantized by them and read back
multiplied by them; a cache in the model's dtype ignores them.
"""

from __future__ import annotations

import torch

from pagoda.attention.backend import AttentionBackend, AttentionMetadata, RotaryArgs
from pagoda.kernels import tuning
from pagoda.kernels.cascade_attention import prefix_attention
from pagoda.kernels.decode_attention import decode_attention
from pagoda.kernels.kv_cache_write import write_kv_cache
from pagoda.kernels.paged_attention import PrefixState, paged_attention
from pagoda.kernels.rotary_kv import rotary_and_write_kv


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    supports_cascade = True

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        rotary: RotaryArgs | None = None,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> torch.Tensor:
        scales = {"k_scale": k_scale, "v_scale": v_scale}
        cascade = metadata.prefix_blocks is not None
        if (not cascade and tuning.FUSED_DECODE_ATTENTION and metadata.is_all_decode and metadata.num_tokens == metadata.num_reqs
                and metadata.num_reqs <= tuning.FUSED_DECODE_MAX_REQS):
            return self._decode(query, key, value, kv_cache, metadata, scale, rotary, scales)
        if rotary is None:
            write_kv_cache(kv_cache, key, value, metadata.slot_mapping, **scales)
        else:
            rotary_and_write_kv(rotary.positions, query, key, value, rotary.cos_sin_cache, kv_cache,
                                metadata.slot_mapping, rotary.is_neox, **scales)
        prefix = None
        if cascade:
            out, lse = prefix_attention(query, kv_cache, metadata.block_tables[0], metadata.prefix_blocks, scale, **scales)
            prefix = PrefixState(metadata.prefix_blocks, out, lse)
        return paged_attention(query, kv_cache, metadata, scale, num_splits=metadata.num_splits, prefix=prefix,
                               **scales)

    def decode_num_splits(self, *, num_reqs: int, max_seq_len: int, num_heads: int, num_kv_heads: int,
                          head_size: int, device: torch.device) -> int | None:
        if device.type != "cuda":
            return None
        return tuning.attention_launch(
            num_reqs=num_reqs, num_tokens=num_reqs, max_query_len=1, max_seq_len=max_seq_len,
            num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, device=device,
        ).num_splits

    @staticmethod
    def _decode(query, key, value, kv_cache, metadata, scale, rotary, scales):
        if rotary is None:
            return decode_attention(query, key, value, kv_cache, metadata, scale, metadata.num_splits, **scales)
        return decode_attention(query, key, value, kv_cache, metadata, scale, metadata.num_splits,
                                positions=rotary.positions, cos_sin_cache=rotary.cos_sin_cache, is_neox=rotary.is_neox,
                                **scales)
