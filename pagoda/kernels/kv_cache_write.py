"""Write this step's keys and values into the paged KV cache (Triton), with a torch reference.

Shapes: key, value [num_tokens, num_kv_heads, head_size] (any token/head strides, unit stride in the
last dim); kv_cache [2, num_blocks, block_size, num_kv_heads, head_size] ([0] keys, [1] values);
slot_mapping int64 [num_tokens] with slot = block * block_size + offset.

Invariants: a token whose slot is negative is padding and writes nothing; values are cast to the
cache dtype; tokens past len(slot_mapping) (if key has more rows) are ignored. An FP8 cache
(float8_e4m3fn / float8_e5m2) gets keys and values quantized with the layer's k_scale / v_scale exactly
as `tuning.quantize_kv` does (x · fp32(1 / scale), clamped, rounded to nearest even): `quantize_fp8`,
shared by every kernel that writes the cache, rounds onto the FP8 grid in fp32 so that the final cast is
exact (Triton's interpreter rounds some fp32 -> fp8 casts wrongly: a carry into the exponent is lost).
Caches in the model's dtype ignore the scales.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning


@triton.jit
def quantize_fp8(x, inv_scale, FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr,
                 FP8_MAGIC: tl.constexpr):
    """fp32(x) · inv_scale, clamped to ±FP8_MAX and rounded to nearest even onto the FP8 grid, as fp32 (see
    tuning.KVFormat.constexprs): normals drop FP8_DROP mantissa bits of the fp32 pattern, subnormals round to
    the ulp of FP8_MAGIC."""
    x = tl.minimum(tl.maximum(x.to(tl.float32) * inv_scale, -FP8_MAX), FP8_MAX)
    bits = x.to(tl.int32, bitcast=True)
    normal = ((bits + ((1 << (FP8_DROP - 1)) - 1) + ((bits >> FP8_DROP) & 1)) & (-(1 << FP8_DROP)))
    mag = tl.abs(x)
    # x's sign bit put on the rounded magnitude (not `-sub`: Triton compiles negation as 0 - sub, which turns a
    # -0.0 into +0.0, so tiny negative values would store as +0 where the reference stores -0)
    sub = ((mag + FP8_MAGIC) - FP8_MAGIC).to(tl.int32, bitcast=True) | ((bits >> 31) << 31)
    return tl.where(mag < FP8_MIN_NORMAL, sub.to(tl.float32, bitcast=True), normal.to(tl.float32, bitcast=True))


def fp8_launch_args(kv_cache: torch.Tensor, k_scale: float, v_scale: float) -> tuple[float, float, dict]:
    """(fp32-bound 1 / k_scale, 1 / v_scale, the FP8 constexprs) of a cache, for the kernels that write it."""
    return 1.0 / k_scale, 1.0 / v_scale, tuning.kv_format(kv_cache.dtype).constexprs()


@triton.jit
def _kv_cache_write_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_inv_scale, v_inv_scale,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_cs, stride_ch,
    HEAD_SIZE: tl.constexpr, NUM_ELEMS: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK: tl.constexpr,
    FP8: tl.constexpr, FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr,
    FP8_MAGIC: tl.constexpr,
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
    if FP8:
        k = quantize_fp8(k, k_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
        v = quantize_fp8(v, v_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + head * stride_ch + dim
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """Store key[t], value[t] at slot_mapping[t] of the cache, in place; negative slots are skipped. An FP8
    cache stores them quantized by k_scale / v_scale."""
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
    k_inv, v_inv, fp8 = fp8_launch_args(kv_cache, k_scale, v_scale)
    _kv_cache_write_kernel[grid](
        key, value, k_cache, v_cache, slot_mapping, k_inv, v_inv,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEAD_SIZE=head_size, NUM_ELEMS=num_elems, BLOCK_SIZE=block_size, BLOCK=block, **fp8,
        num_warps=4 if block >= 512 else 1,
    )


def write_kv_cache_ref(
    kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """Torch reference: index_copy of the non-padding tokens (quantized: tuning.quantize_kv) into the
    flattened cache (as bytes: CPU torch has no index_copy for FP8)."""
    num_blocks, block_size = kv_cache.shape[1], kv_cache.shape[2]
    flat = kv_cache.view(2, num_blocks * block_size, *kv_cache.shape[3:])
    n = slot_mapping.shape[0]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k = tuning.quantize_kv(key[:n][keep], k_scale, kv_cache.dtype)
    v = tuning.quantize_kv(value[:n][keep], v_scale, kv_cache.dtype)
    if tuning.kv_format(kv_cache.dtype).fp8:
        flat, k, v = flat.view(torch.uint8), k.view(torch.uint8), v.view(torch.uint8)
    flat[0].index_copy_(0, slots, k)
    flat[1].index_copy_(0, slots, v)
