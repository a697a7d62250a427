"""Reference attention backend in plain torch: the CPU path and the oracle for the Triton kernels.

Invariants: numerically this is softmax(q·kᵀ·scale + causal mask)·v per request, computed in fp32,
with keys and values gathered from the paged cache after this step's tokens were written to it.
Slots < 0 in slot_mapping are padding and are not written (the Triton backend's contract).
With `rotary`, query and key are rotated by the model's own unfused rotary (`rotary.rotate`) before
the write, so this backend's numerics are exactly the model's rotary followed by attention.
It does not split KV: `decode_num_splits` is the base class's None and `num_splits` is ignored.
An FP8 cache (float8_e4m3fn / float8_e5m2) stores tuning.quantize_kv(key, k_scale) and
tuning.quantize_kv(value, v_scale) and is read back as fp8 · scale in fp32 (tuning.dequantize_kv): CPU
torch casts to and from FP8 and gathers FP8 tensors but has no index_copy for them, so writes copy bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.attention.backend import AttentionBackend, AttentionMetadata, RotaryArgs
from pagoda.kernels.tuning import dequantize_kv, kv_format, quantize_kv


def write_kv_cache(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor,
                   k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Store each token's key and value at its slot (block * block_size + offset), quantized by
    k_scale / v_scale for an FP8 cache; negative slots are padding and are skipped."""
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        slot_mapping, key, value = slot_mapping[keep], key[keep], value[keep]
    num_blocks, block_size = kv_cache.shape[1], kv_cache.shape[2]
    flat = kv_cache.view(2, num_blocks * block_size, *kv_cache.shape[3:])
    key, value = quantize_kv(key, k_scale, kv_cache.dtype), quantize_kv(value, v_scale, kv_cache.dtype)
    if kv_format(kv_cache.dtype).fp8:
        flat, key, value = flat.view(torch.uint8), key.view(torch.uint8), value.view(torch.uint8)
    flat[0].index_copy_(0, slot_mapping, key)
    flat[1].index_copy_(0, slot_mapping, value)


def paged_attention_reference(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Attention of every query row over its request's cached keys/values (already written; an FP8
    cache's dequantized by k_scale / v_scale)."""
    block_size = kv_cache.shape[2]
    num_heads, num_kv_heads = query.shape[1], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = metadata.query_start_loc_cpu
    for i, seq_len in enumerate(metadata.seq_lens_cpu):
        q_start, q_end = starts[i], starts[i + 1]
        query_len = q_end - q_start
        if query_len == 0:
            continue
        num_blocks = (seq_len + block_size - 1) // block_size
        blocks = metadata.block_tables[i, :num_blocks].long()
        keys = kv_cache[0, blocks].reshape(-1, num_kv_heads, kv_cache.shape[4])[:seq_len]
        values = kv_cache[1, blocks].reshape(-1, num_kv_heads, kv_cache.shape[4])[:seq_len]
        q = query[q_start:q_end].float().transpose(0, 1)  # [H, q, D]
        k = dequantize_kv(keys, k_scale).transpose(0, 1).repeat_interleave(group, dim=0)  # [H, L, D]
        v = dequantize_kv(values, v_scale).transpose(0, 1).repeat_interleave(group, dim=0)
        positions = torch.arange(seq_len - query_len, seq_len, device=query.device)
        mask = torch.arange(seq_len, device=query.device)[None, :] <= positions[:, None]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        out[q_start:q_end] = attn.transpose(0, 1).to(query.dtype)
    return out


class TorchAttentionBackend(AttentionBackend):
    name = "torch"
    needs_host_lengths = True  # loops over the requests with seq_lens_cpu

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
        if rotary is not None:
            query, key = rotary.rotate(rotary.positions, query, key)
        write_kv_cache(kv_cache, key, value, metadata.slot_mapping, k_scale, v_scale)
        return paged_attention_reference(query, kv_cache, metadata, scale, k_scale, v_scale)
