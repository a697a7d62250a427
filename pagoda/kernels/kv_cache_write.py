"""Write this step's keys and values into the paged KV cache (Triton), with a torch reference.

Shapes: key, value [num_tokens, num_kv_heads, head_size] (any token/head strides, unit stride in the
last dim); kv_cache [2, num_blocks, block_size, num_kv_heads, head_size] ([0] keys, [1] values);
slot_mapping int64 [num_tokens] with slot = block * block_size + offset.

Invariants: a token whose slot is negative is padding and writes nothing; values are cast to the
cache dtype; tokens past len(slot_mapping) (if key has more rows) are ignored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning


@triton.jit
def _kv_cache_write_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,
    HEAD_SIZE: tl.constexpr, NUM_ELEMS: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < NUM_ELEMS
    head = offs // HEAD_SIZE
    dim = offs % HEAD_SIZE
    tok64 = tok.to(tl.int64)
    k = tl.load(key_ptr + tok64 * stride_kt + head * stride_kh + dim, mask=mask)
    v = tl.load(value_ptr + tok64 * stride_vt + head * stride_vh + dim, mask=mask)
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + head * stride_ch + dim
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store key[t], value[t] at slot_mapping[t] of the cache, in place; negative slots are skipped."""
    num_tokens = slot_mapping.shape[0]
    if num_tokens == 0:
        return
    _, _, block_size, num_kv_heads, head_size = kv_cache.shape
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    num_elems = num_kv_heads * head_size
    block = min(tuning.KV_WRITE_BLOCK, tuning.next_power_of_2(num_elems))
    grid = (num_tokens, triton.cdiv(num_elems, block))
    _kv_cache_write_kernel[grid](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEAD_SIZE=head_size, NUM_ELEMS=num_elems, BLOCK_SIZE=block_size, BLOCK=block,
        num_warps=4 if block >= 512 else 1,
    )


def write_kv_cache_ref(
    kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Torch reference: index_copy of the non-padding tokens into the flattened cache."""
    num_blocks, block_size = kv_cache.shape[1], kv_cache.shape[2]
    flat = kv_cache.view(2, num_blocks * block_size, *kv_cache.shape[3:])
    n = slot_mapping.shape[0]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    flat[0].index_copy_(0, slots, key[:n][keep].to(kv_cache.dtype))
    flat[1].index_copy_(0, slots, value[:n][keep].to(kv_cache.dtype))
