"""KV-cache write, RMSNorm, rotary and activation kernels vs. their torch references."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels.activation import (
    gelu_and_mul,
    gelu_and_mul_ref,
    gelu_tanh,
    gelu_tanh_ref,
    silu_and_mul,
    silu_and_mul_ref,
)
from pagoda.kernels.kv_cache_write import write_kv_cache, write_kv_cache_ref
from pagoda.kernels.rmsnorm import rmsnorm, rmsnorm_ref
from pagoda.kernels.rotary import apply_rotary, apply_rotary_ref, build_cos_sin_cache

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 is truncated by Triton's interpreter, so bf16 runs only on CUDA.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def randn(*shape, dtype, device, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


@pytest.mark.parametrize("block_size,num_kv_heads,head_size", [(8, 2, 32), (16, 1, 64), (32, 3, 48)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache(block_size, num_kv_heads, head_size, dtype, device):
    num_blocks, num_tokens = 5, 7
    cache = randn(2, num_blocks, block_size, num_kv_heads, head_size, dtype=dtype, device=device, seed=1)
    # Key is a strided view (as sliced from a qkv projection); slots scattered, two padding (-1).
    kv = randn(num_tokens, 2 * num_kv_heads, head_size, dtype=dtype, device=device, seed=2)
    key, value = kv[:, :num_kv_heads], kv[:, num_kv_heads:]
    perm = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(3))[:num_tokens]
    perm[[1, 4]] = -1
    slots = perm.to(device)
    expected = cache.clone()
    write_kv_cache_ref(expected, key, value, slots)
    write_kv_cache(cache, key, value, slots)
    torch.testing.assert_close(cache, expected, atol=0, rtol=0)


@pytest.mark.parametrize("hidden", [64, 96])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm(hidden, dtype, device):
    x = randn(5, hidden, dtype=dtype, device=device, seed=1) * 3
    weight = randn(hidden, dtype=dtype, device=device, seed=2)
    torch.testing.assert_close(rmsnorm(x, weight, 1e-6), rmsnorm_ref(x, weight, 1e-6), atol=TOL[dtype], rtol=TOL[dtype])

    residual = randn(5, hidden, dtype=dtype, device=device, seed=3)
    ref_out, ref_res = rmsnorm_ref(x, weight, 1e-6, residual)
    x_before = x.clone()
    out, res = rmsnorm(x, weight, 1e-6, residual)
    assert res is residual
    torch.testing.assert_close(residual, ref_res, atol=0, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_residual_out_leaves_the_residual_alone(dtype, device):
    x = randn(5, 96, dtype=dtype, device=device, seed=7) * 3
    weight = randn(96, dtype=dtype, device=device, seed=8)
    residual = randn(5, 96, dtype=dtype, device=device, seed=9)
    residual_before = residual.clone()
    ref_out, ref_res = rmsnorm_ref(x, weight, 1e-6, residual)
    residual_out = torch.full_like(residual, float("nan"))
    out, res = rmsnorm(x, weight, 1e-6, residual, residual_out)
    assert res is residual_out
    torch.testing.assert_close(residual_out, ref_res, atol=0, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(residual, residual_before)
    strided_out = torch.full((96, 5), float("nan"), dtype=dtype, device=device).t()  # written through a copy
    out, res = rmsnorm(x, weight, 1e-6, residual, strided_out)
    assert res is strided_out
    torch.testing.assert_close(strided_out, ref_res, atol=0, rtol=0)
    with pytest.raises(ValueError, match="residual_out"):
        rmsnorm(x, weight, 1e-6, residual, residual_out.float() if dtype != torch.float32 else residual_out.half())
    with pytest.raises(ValueError, match="needs a residual"):
        rmsnorm(x, weight, 1e-6, None, residual_out)


def test_rmsnorm_3d_noncontiguous_residual(device):
    x = randn(2, 3, 32, dtype=torch.float32, device=device, seed=4)
    weight = randn(32, dtype=torch.float32, device=device, seed=5)
    residual = randn(32, 2, 3, dtype=torch.float32, device=device, seed=6).permute(1, 2, 0)
    ref_out, ref_res = rmsnorm_ref(x, weight, 1e-5, residual)
    out, res = rmsnorm(x, weight, 1e-5, residual)
    torch.testing.assert_close(res, ref_res)
    torch.testing.assert_close(out, ref_out)


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_size,rot_dim", [(32, 32), (64, 16)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary(is_neox, head_size, rot_dim, dtype, device):
    num_tokens, num_heads, num_kv_heads = 5, 3, 1
    cache = build_cos_sin_cache(10000.0, rot_dim, 64, device=device)
    positions = torch.tensor([0, 3, 17, 63, 5], device=device)
    qkv = randn(num_tokens, num_heads + 2 * num_kv_heads, head_size, dtype=dtype, device=device, seed=1)
    q, k = qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads]  # strided views
    ref_q, ref_k = apply_rotary_ref(positions, q, k, cache, is_neox)
    out_q, out_k = apply_rotary(positions, q, k, cache, is_neox, inplace=False)
    torch.testing.assert_close(out_q, ref_q, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(out_k, ref_k, atol=TOL[dtype], rtol=TOL[dtype])
    v_before = qkv[:, num_heads + num_kv_heads :].clone()
    apply_rotary(positions, q, k, cache, is_neox, inplace=True)
    torch.testing.assert_close(q, ref_q, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(k, ref_k, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(qkv[:, num_heads + num_kv_heads :], v_before)


def test_rotary_neox_matches_hf_rotate_half(device):
    # HF Llama: q * cos + rotate_half(q) * sin with cos = cat(cos, cos).
    cache = build_cos_sin_cache(500000.0, 32, 40)
    positions = torch.tensor([1, 39, 7])
    q = randn(3, 2, 32, dtype=torch.float32, device="cpu", seed=7)
    cos, sin = cache[positions].chunk(2, dim=-1)
    cos, sin = torch.cat((cos, cos), -1)[:, None], torch.cat((sin, sin), -1)[:, None]
    rotate_half = torch.cat((-q[..., 16:], q[..., :16]), -1)
    expected = q * cos + rotate_half * sin
    out, _ = apply_rotary(positions.to(device), q.to(device), None, cache.to(device), True, inplace=False)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_llama3_inv_freq_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from pagoda.kernels.rotary import rope_inv_freq

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    config = transformers.LlamaConfig(hidden_size=1024, num_attention_heads=8, head_dim=128,
                                      rope_parameters={"rope_theta": 500000.0, **scaling})
    hf_inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    assert attention_factor == 1.0
    ours = rope_inv_freq(500000.0, 128, scaling)
    torch.testing.assert_close(ours, hf_inv_freq, atol=0, rtol=0)
    assert not torch.equal(ours, rope_inv_freq(500000.0, 128, None))
    cache = build_cos_sin_cache(500000.0, 128, 16, scaling)
    freqs = torch.outer(torch.arange(16, dtype=torch.float32), hf_inv_freq)
    torch.testing.assert_close(cache, torch.cat((freqs.cos(), freqs.sin()), -1), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations(dtype, device):
    x = randn(4, 2 * 48, dtype=dtype, device=device, seed=1) * 2
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), atol=TOL[dtype], rtol=TOL[dtype])
    for approximate in ("none", "tanh"):
        torch.testing.assert_close(gelu_and_mul(x, approximate), gelu_and_mul_ref(x, approximate),
                                   atol=TOL[dtype], rtol=TOL[dtype])
    y = randn(2, 3, 40, dtype=dtype, device=device, seed=2) * 4
    torch.testing.assert_close(gelu_tanh(y), gelu_tanh_ref(y), atol=TOL[dtype], rtol=TOL[dtype])
    wide = x[:, :64]  # strided rows
    torch.testing.assert_close(silu_and_mul(wide), silu_and_mul_ref(wide), atol=TOL[dtype], rtol=TOL[dtype])
