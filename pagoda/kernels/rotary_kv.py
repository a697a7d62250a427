"""Rotary embedding fused with the paged KV-cache write (Triton), with a torch reference.

One launch replaces `apply_rotary` + `write_kv_cache` on the attention path (at batch-1 decode each is
a separate small kernel per layer). Shapes and layouts are those two kernels' (see rotary.py and
kv_cache_write.py): positions int [T]; q [T, H, D], k and v [T, Hkv, D] (any token/head strides, unit
stride in the last dim, e.g. views of one qkv buffer); cos_sin_cache [max_pos, rot_dim] = cat(cos, sin);
kv_cache [2, num_blocks, block_size, Hkv, D]; slot_mapping int64 [T'] (slot = block * block_size + offset).

Kernel design: grid (token, head chunk). A program loads its token's cos/sin, then either rotates
BLOCK_H query heads in place (rotary.py's `_rotate_heads`) or, unless the slot is padding, stores
rotate(k) and v of BLOCK_H key/value heads straight into the cache slot: k is read once and never
written back. Splitting by heads keeps a batch-1 decode step from running on one SM.

Invariants:
- Results are bitwise those of `apply_rotary(positions, q, k, ...)` followed by
  `write_kv_cache(kv_cache, k, v, slot_mapping)`: rotation math in fp32, rounded once to q/k's dtype
  (then cast to the cache dtype, or quantized with k_scale / v_scale for an FP8 cache, as
  kv_cache_write.quantize_fp8); only the first rot_dim dims of a head rotate, the rest pass through.
- Writes only q's rotary dims and the cache rows at non-negative slots; k and v are never modified
  (the attention kernels read keys only from the cache). A token whose slot is negative, or past
  len(slot_mapping), is padding: its q is rotated, nothing is written to the cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.kv_cache_write import fp8_launch_args, quantize_fp8, write_kv_cache_ref
from pagoda.kernels.rotary import _pair_offsets, _rotate_heads, apply_rotary_ref


@triton.jit
def _write_kv_heads(k_ptr, v_ptr, kc_ptr, vc_ptr, stride_kh, stride_vh, stride_ch, num_heads,
                    cos, sin, offs_p, p_mask, k_inv_scale, v_inv_scale,
                    HEAD_SIZE: tl.constexpr, HALF: tl.constexpr, IS_NEOX: tl.constexpr,
                    HAS_REST: tl.constexpr, REST_PAD: tl.constexpr, HEAD_PAD: tl.constexpr,
                    BLOCK_H: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr,
                    FP8_MIN_NORMAL: tl.constexpr, FP8_MAGIC: tl.constexpr):
    """One token: cache[k] = rotate(k) (pass-through dims copied), cache[v] = v (quantized for an FP8
    cache). Pointers are the token's rows of k and v and its slot's rows of the key and value caches."""
    i1, i2 = _pair_offsets(offs_p, HALF, IS_NEOX)
    offs_r = 2 * HALF + tl.arange(0, REST_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    for h0 in range(0, num_heads, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = offs_h[:, None] < num_heads
        src = k_ptr + offs_h[:, None] * stride_kh
        dst = kc_ptr + offs_h[:, None] * stride_ch
        mask = h_mask & p_mask[None, :]
        x1 = tl.load(src + i1[None, :], mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + i2[None, :], mask=mask, other=0.0).to(tl.float32)
        o1 = x1 * cos[None, :] - x2 * sin[None, :]
        o2 = x2 * cos[None, :] + x1 * sin[None, :]
        # Round to k's dtype first, as apply_rotary does in place, then to the cache dtype.
        o1 = o1.to(k_ptr.dtype.element_ty)
        o2 = o2.to(k_ptr.dtype.element_ty)
        if FP8:
            o1 = quantize_fp8(o1, k_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
            o2 = quantize_fp8(o2, k_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
        tl.store(dst + i1[None, :], o1.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + i2[None, :], o2.to(kc_ptr.dtype.element_ty), mask=mask)
        if HAS_REST:
            r_mask = h_mask & (offs_r[None, :] < HEAD_SIZE)
            rest = tl.load(src + offs_r[None, :], mask=r_mask)
            if FP8:
                rest = quantize_fp8(rest, k_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
            tl.store(dst + offs_r[None, :], rest.to(kc_ptr.dtype.element_ty), mask=r_mask)
        d_mask = h_mask & (offs_d[None, :] < HEAD_SIZE)
        v = tl.load(v_ptr + offs_h[:, None] * stride_vh + offs_d[None, :], mask=d_mask)
        if FP8:
            v = quantize_fp8(v, v_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
        tl.store(vc_ptr + offs_h[:, None] * stride_ch + offs_d[None, :], v.to(vc_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def _rotary_kv_kernel(
    q_ptr, k_ptr, v_ptr, positions_ptr, cos_sin_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    k_inv_scale, v_inv_scale, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_c,
    stride_cb, stride_cs, stride_ch,
    num_q_heads, num_kv_heads, num_slots,
    HEAD_SIZE: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, IS_NEOX: tl.constexpr,
    HAS_REST: tl.constexpr, REST_PAD: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr,
    FP8: tl.constexpr, FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr,
    FP8_MAGIC: tl.constexpr,
):
    # Program (token, chunk): chunks [0, q_chunks) rotate BLOCK_H query heads each, the rest write
    # BLOCK_H key/value heads each, so even a single token spreads over several SMs.
    tok = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    q_chunks = tl.cdiv(num_q_heads, BLOCK_H)
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    offs_p = tl.arange(0, HALF_PAD)
    p_mask = offs_p < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_c + offs_p, mask=p_mask, other=1.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_c + HALF + offs_p, mask=p_mask, other=0.0).to(tl.float32)
    if chunk < q_chunks:
        h0 = chunk * BLOCK_H
        _rotate_heads(q_ptr + h0 * stride_qh, tok, stride_qt, stride_qh, tl.minimum(num_q_heads - h0, BLOCK_H),
                      cos, sin, offs_p, p_mask, HALF, IS_NEOX, BLOCK_H)
    else:
        h0 = (chunk - q_chunks) * BLOCK_H
        slot = tl.load(slot_mapping_ptr + tok, mask=tok < num_slots, other=-1).to(tl.int64)
        if slot >= 0:
            dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + h0 * stride_ch
            _write_kv_heads(k_ptr + tok * stride_kt + h0 * stride_kh, v_ptr + tok * stride_vt + h0 * stride_vh,
                            k_cache_ptr + dst, v_cache_ptr + dst,
                            stride_kh, stride_vh, stride_ch, tl.minimum(num_kv_heads - h0, BLOCK_H),
                            cos, sin, offs_p, p_mask, k_inv_scale, v_inv_scale,
                            HEAD_SIZE, HALF, IS_NEOX, HAS_REST, REST_PAD, HEAD_PAD, BLOCK_H,
                            FP8, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)


def _check(q, k, v, cos_sin_cache, kv_cache, slot_mapping) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError("q must be [num_tokens, num_heads, head_size] and k, v [num_tokens, num_kv_heads, head_size]")
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or tuple(kv_cache.shape[3:]) != tuple(k.shape[1:]):
        raise ValueError(
            f"kv_cache {tuple(kv_cache.shape)} must be [2, num_blocks, block_size, {k.shape[1]}, {k.shape[2]}]")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q head_size {q.shape[-1]} differs from k's {k.shape[-1]}")
    rot_dim = cos_sin_cache.shape[-1]
    if rot_dim % 2 or rot_dim > q.shape[-1]:
        raise ValueError(f"rot_dim {rot_dim} must be even and <= head_size {q.shape[-1]}")
    if any(t.stride(-1) != 1 for t in (q, k, v, cos_sin_cache, kv_cache)):
        raise ValueError("q, k, v, cos_sin_cache and kv_cache must be contiguous in the last dim")
    if slot_mapping.dim() != 1:
        raise ValueError("slot_mapping must be 1-D")


def rotary_and_write_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    is_neox: bool = True,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Rotate q in place and store rotate(k), v at slot_mapping of kv_cache (slots < 0 skipped; an FP8
    cache stores them quantized by k_scale / v_scale)."""
    _check(q, k, v, cos_sin_cache, kv_cache, slot_mapping)
    num_tokens = positions.shape[0]
    if num_tokens == 0:
        return
    head_size, half = q.shape[-1], cos_sin_cache.shape[-1] // 2
    rest = head_size - 2 * half
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    block_h = tuning.ROTARY_BLOCK_H
    chunks = triton.cdiv(q.shape[1], block_h) + triton.cdiv(k.shape[1], block_h)
    k_inv, v_inv, fp8 = fp8_launch_args(kv_cache, k_scale, v_scale)
    _rotary_kv_kernel[(num_tokens, chunks)](
        q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping, k_inv, v_inv,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin_cache.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        q.shape[1], k.shape[1], slot_mapping.shape[0],
        HEAD_SIZE=head_size, HALF=half, HALF_PAD=tuning.next_power_of_2(half), IS_NEOX=is_neox,
        HAS_REST=rest > 0, REST_PAD=tuning.next_power_of_2(rest), HEAD_PAD=tuning.next_power_of_2(head_size),
        BLOCK_SIZE=kv_cache.shape[2], BLOCK_H=block_h, **fp8, num_warps=4 if half >= 64 else 2,
    )


def rotary_and_write_kv_ref(positions, q, k, v, cos_sin_cache, kv_cache, slot_mapping, is_neox: bool = True,
                            k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """Torch reference with the same in-place contract: q rotated in place, k and v left as they are."""
    rot_q, rot_k = apply_rotary_ref(positions, q, k, cos_sin_cache, is_neox)
    q.copy_(rot_q)
    write_kv_cache_ref(kv_cache, rot_k, v, slot_mapping, k_scale, v_scale)
