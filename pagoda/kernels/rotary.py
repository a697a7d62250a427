"""Rotary position embedding (Triton) and the cos/sin cache builder, with a torch reference.

Shapes: positions int [T]; q [T, H, D], k [T, Hkv, D] (any token/head strides, unit stride in the
last dim); cos_sin_cache [max_pos, rot_dim] = cat(cos, sin) of the rot_dim // 2 frequencies (vLLM's
layout), rot_dim <= D and even. Only the first rot_dim dims of each head rotate (partial rotary);
the rest pass through unchanged.
Layouts: neox (is_neox=True) pairs dim i with i + rot_dim/2 ("rotate_half", HF Llama);
gptj (is_neox=False) pairs dims 2i and 2i+1 (interleaved).
Math in fp32, rounded once to q/k's dtype. Scaling (linear, llama3) only changes the cache contents,
built by `build_cos_sin_cache`, which follows transformers' inverse-frequency formulas.
Invariant: `apply_rotary(..., inplace=True)` writes only q and k's rotary dims; out of place never
modifies its inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.rope_cache import build_cos_sin_cache, rope_inv_freq  # noqa: F401  (re-exported)


@triton.jit
def _pair_offsets(offs_p, HALF: tl.constexpr, IS_NEOX: tl.constexpr):
    """The dims rotated together, per frequency p: (p, p + HALF) for neox, (2p, 2p + 1) for gptj."""
    if IS_NEOX:
        return offs_p, offs_p + HALF
    return 2 * offs_p, 2 * offs_p + 1


@triton.jit
def _rotate_heads(x_ptr, tok, stride_t, stride_h, num_heads, cos, sin, offs_p, p_mask,
                  HALF: tl.constexpr, IS_NEOX: tl.constexpr, BLOCK_H: tl.constexpr):
    i1, i2 = _pair_offsets(offs_p, HALF, IS_NEOX)
    base = x_ptr + tok * stride_t
    for h0 in range(0, num_heads, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask = (offs_h[:, None] < num_heads) & p_mask[None, :]
        p1 = base + offs_h[:, None] * stride_h + i1[None, :]
        p2 = base + offs_h[:, None] * stride_h + i2[None, :]
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
        o1 = x1 * cos[None, :] - x2 * sin[None, :]
        o2 = x2 * cos[None, :] + x1 * sin[None, :]
        tl.store(p1, o1.to(x_ptr.dtype.element_ty), mask=mask)
        tl.store(p2, o2.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, positions_ptr, cos_sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_c,
    num_q_heads, num_k_heads,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, IS_NEOX: tl.constexpr, HAS_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    offs_p = tl.arange(0, HALF_PAD)
    p_mask = offs_p < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_c + offs_p, mask=p_mask, other=1.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_c + HALF + offs_p, mask=p_mask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, tok, stride_qt, stride_qh, num_q_heads, cos, sin, offs_p, p_mask, HALF, IS_NEOX, BLOCK_H)
    if HAS_K:
        _rotate_heads(k_ptr, tok, stride_kt, stride_kh, num_k_heads, cos, sin, offs_p, p_mask, HALF, IS_NEOX, BLOCK_H)


def apply_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
    inplace: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate q [T, H, D] and k [T, Hkv, D] (k may be None) by positions; returns (q, k)."""
    if q.dim() != 3 or (k is not None and k.dim() != 3):
        raise ValueError("q and k must be [num_tokens, num_heads, head_size]")
    rot_dim = cos_sin_cache.shape[-1]
    if rot_dim % 2 or rot_dim > q.shape[-1]:
        raise ValueError(f"rot_dim {rot_dim} must be even and <= head_size {q.shape[-1]}")
    if not inplace:
        q = q.clone()
        k = k.clone() if k is not None else None
    if q.stride(-1) != 1 or (k is not None and k.stride(-1) != 1) or cos_sin_cache.stride(-1) != 1:
        raise ValueError("q, k and cos_sin_cache must be contiguous in the last dim")
    num_tokens = positions.shape[0]
    if num_tokens == 0:
        return q, k
    half = rot_dim // 2
    k_arg = k if k is not None else q
    _rotary_kernel[(num_tokens,)](
        q, k_arg, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k_arg.stride(0), k_arg.stride(1), cos_sin_cache.stride(0),
        q.shape[1], k_arg.shape[1],
        HALF=half, HALF_PAD=tuning.next_power_of_2(half), IS_NEOX=is_neox, HAS_K=k is not None,
        BLOCK_H=tuning.ROTARY_BLOCK_H, num_warps=4 if half >= 64 else 2,
    )
    return q, k


def apply_rotary_ref(positions, q, k, cos_sin_cache, is_neox: bool = True):
    """Torch reference, out of place; returns (q, k)."""
    rot_dim = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)  # [T, rot/2]
    cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x):
        if x is None:
            return None
        xf = x.float()
        rot, rest = xf[..., :rot_dim], xf[..., rot_dim:]
        if is_neox:
            x1, x2 = rot.chunk(2, dim=-1)
            rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        return torch.cat((rot, rest), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)
