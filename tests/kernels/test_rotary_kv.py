"""Fused rotary + KV-cache write vs. the unfused kernels and the torch references, and the Triton
attention backend with rotary vs. the torch backend."""

from __future__ import annotations

import pytest
import torch

from pagoda.attention.backend import AttentionMetadata, RotaryArgs
from pagoda.attention.torch_backend import TorchAttentionBackend
from pagoda.attention.triton_backend import TritonAttentionBackend
from pagoda.kernels.kv_cache_write import write_kv_cache
from pagoda.kernels.rotary import apply_rotary, build_cos_sin_cache
from pagoda.kernels.rotary_kv import rotary_and_write_kv, rotary_and_write_kv_ref
from pagoda.model_executor.layers.rotary import RotaryEmbedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 is truncated by Triton's interpreter, so bf16 runs only on CUDA.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# The torch reference is bitwise equal in the interpreter; compiled kernels may contract to FMA.
REF_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def randn(*shape, dtype, device, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


def make_inputs(num_tokens, num_heads, num_kv_heads, head_size, rot_dim, block_size, dtype, device, slots):
    """q/k/v as strided views of one qkv buffer, a random cache, scattered slots (as given)."""
    qkv = randn(num_tokens, num_heads + 2 * num_kv_heads, head_size, dtype=dtype, device=device, seed=1)
    cache = randn(2, 6, block_size, num_kv_heads, head_size, dtype=dtype, device=device, seed=2)
    cos_sin = build_cos_sin_cache(10000.0, rot_dim, 64, device=device)
    positions = torch.tensor([0, 3, 17, 63, 5, 40, 9][:num_tokens], device=device)
    return qkv, cache, cos_sin, positions, torch.tensor(slots, dtype=torch.int64, device=device)


def split(qkv, num_heads, num_kv_heads):
    return qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads], qkv[:, num_heads + num_kv_heads :]


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_size,rot_dim", [(64, 64), (48, 48), (64, 32), (80, 20)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_and_write_kv_matches_unfused(is_neox, head_size, rot_dim, dtype, device):
    num_heads, num_kv_heads, block_size = 12, 2, 8  # 12 q heads: more than one BLOCK_H chunk
    slots = [3, -1, 47, 8, -1, 20, 33]  # scattered over blocks, two padding tokens
    qkv, cache, cos_sin, positions, slot_mapping = make_inputs(
        7, num_heads, num_kv_heads, head_size, rot_dim, block_size, dtype, device, slots)
    qkv_before = qkv.clone()

    # Unfused kernels: rotary in place on a copy of the buffer, then the cache write.
    qkv_unfused, cache_unfused = qkv.clone(), cache.clone()
    q_u, k_u, v_u = split(qkv_unfused, num_heads, num_kv_heads)
    apply_rotary(positions, q_u, k_u, cos_sin, is_neox, inplace=True)
    write_kv_cache(cache_unfused, k_u, v_u, slot_mapping)

    qkv_ref, cache_ref = qkv.clone(), cache.clone()
    q_r, k_r, v_r = split(qkv_ref, num_heads, num_kv_heads)
    rotary_and_write_kv_ref(positions, q_r, k_r, v_r, cos_sin, cache_ref, slot_mapping, is_neox)

    q, k, v = split(qkv, num_heads, num_kv_heads)
    rotary_and_write_kv(positions, q, k, v, cos_sin, cache, slot_mapping, is_neox)

    torch.testing.assert_close(q, q_u, atol=0, rtol=0)
    torch.testing.assert_close(cache, cache_unfused, atol=0, rtol=0)
    tol = 0 if device == "cpu" else REF_TOL[dtype]
    torch.testing.assert_close(q, q_r, atol=tol, rtol=tol)
    torch.testing.assert_close(cache, cache_ref, atol=tol, rtol=tol)
    # k and v are only read: the rotated keys live in the cache alone.
    assert torch.equal(qkv[:, num_heads:], qkv_before[:, num_heads:])


def test_tokens_past_slot_mapping_are_padding(device):
    dtype = torch.float16
    qkv, cache, cos_sin, positions, slot_mapping = make_inputs(5, 4, 1, 32, 32, 8, dtype, device, [2, 9, 30])
    cache_ref, qkv_ref = cache.clone(), qkv.clone()
    rotary_and_write_kv_ref(positions, *split(qkv_ref, 4, 1), cos_sin, cache_ref, slot_mapping)
    rotary_and_write_kv(positions, *split(qkv, 4, 1), cos_sin, cache, slot_mapping)
    tol = 0 if device == "cpu" else REF_TOL[dtype]
    torch.testing.assert_close(cache, cache_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(qkv, qkv_ref, atol=tol, rtol=tol)  # all 5 q rows rotated


def test_rotary_and_write_kv_checks_shapes(device):
    qkv, cache, cos_sin, positions, slot_mapping = make_inputs(3, 4, 2, 32, 32, 8, torch.float32, device, [0, 1, 2])
    q, k, v = split(qkv, 4, 2)
    with pytest.raises(ValueError, match="kv_cache"):
        rotary_and_write_kv(positions, q, k, v, cos_sin, cache[:, :, :, :1], slot_mapping)
    with pytest.raises(ValueError, match="rot_dim"):
        rotary_and_write_kv(positions, q, k, v, build_cos_sin_cache(1e4, 34, 64, device=device), cache, slot_mapping)
    # No tokens: nothing launched, nothing changed.
    before = cache.clone()
    rotary_and_write_kv(positions[:0], q[:0], k[:0], v[:0], cos_sin, cache, slot_mapping[:0])
    assert torch.equal(cache, before)


@pytest.mark.parametrize("is_neox", [True, False])
def test_triton_backend_rotary_matches_torch_backend(is_neox, device):
    # Request 0 prefills positions 0..4, request 1 decodes position 9 (0..8 already cached); the
    # last token is padding (slot -1). Partial rotary: 16 of 32 dims rotate.
    num_heads, num_kv_heads, head_size, block_size = 4, 2, 32, 4
    rope = RotaryEmbedding(head_size, 16, 64, 10000.0, is_neox).to(device)
    block_tables = torch.tensor([[5, 1, 0], [2, 4, 3]], dtype=torch.int32)
    positions = torch.tensor([0, 1, 2, 3, 4, 9, 0], device=device)
    slots = [int(block_tables[0, p // block_size]) * block_size + p % block_size for p in range(5)]
    slots += [int(block_tables[1, 9 // block_size]) * block_size + 9 % block_size, -1]
    qsl, seq_lens = [0, 5, 6], [5, 10]
    md = AttentionMetadata(
        num_reqs=2, num_tokens=6, max_query_len=5, max_seq_len=10,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc_cpu=qsl, seq_lens_cpu=seq_lens,
    )
    cache = randn(2, 6, block_size, num_kv_heads, head_size, dtype=torch.float32, device=device, seed=3)
    qkv = randn(7, num_heads + 2 * num_kv_heads, head_size, dtype=torch.float32, device=device, seed=4)
    rotary = RotaryArgs(positions, rope.cos_sin_cache, rope.is_neox_style, rope)

    cache_torch, qkv_torch = cache.clone(), qkv.clone()
    q_t, k_t, v_t = split(qkv_torch, num_heads, num_kv_heads)
    ref = TorchAttentionBackend().forward(q_t, k_t, v_t, cache_torch, md, 0.3, rotary=rotary)
    out = TritonAttentionBackend().forward(*split(qkv, num_heads, num_kv_heads), cache, md, 0.3, rotary=rotary)
    torch.testing.assert_close(cache, cache_torch, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[:6], ref[:6], atol=1e-4, rtol=1e-4)
