"""FP8 KV cache (float8_e4m3fn / float8_e5m2 with per-layer k_scale / v_scale): every kernel that writes or
reads the cache against its torch reference, on CPU through Triton's interpreter and on CUDA.

Writes must equal the references byte for byte (one rounding rule: tuning.quantize_kv); reads are
compared with the fp32 references over the same fp8 cache (dequantized by the scales).
"""

from __future__ import annotations

import pytest
import torch
from test_decode_attention import decode_batch, unfused
from test_paged_attention import make_batch

from pagoda.attention.backend import AttentionMetadata, RotaryArgs
from pagoda.attention.torch_backend import TorchAttentionBackend, paged_attention_reference
from pagoda.attention.torch_backend import write_kv_cache as torch_write_kv_cache
from pagoda.attention.triton_backend import TritonAttentionBackend
from pagoda.kernels import tuning
from pagoda.kernels.decode_attention import decode_attention
from pagoda.kernels.kv_cache_write import write_kv_cache, write_kv_cache_ref
from pagoda.kernels.paged_attention import paged_attention, paged_attention_ref
from pagoda.kernels.rotary import build_cos_sin_cache
from pagoda.kernels.rotary_kv import rotary_and_write_kv, rotary_and_write_kv_ref
from pagoda.model_executor.layers.rotary import RotaryEmbedding

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
TOL = {torch.float32: 1e-4, torch.float16: 3e-3}
K_SCALE, V_SCALE = 0.05, 0.02  # x / scale: about +-60 and +-150 for randn values, some saturating at +-448


def as_bytes(cache: torch.Tensor) -> torch.Tensor:
    return cache.view(torch.uint8)  # CPU torch has no == for FP8; bytes also compare NaNs


def to_fp8(kv: torch.Tensor, dtype: torch.dtype, k_scale=K_SCALE, v_scale=V_SCALE) -> torch.Tensor:
    """A cache of `dtype` holding what an FP8 write of kv's keys and values would (NaNs stay NaN)."""
    return torch.stack([tuning.quantize_kv(kv[0], k_scale, dtype), tuning.quantize_kv(kv[1], v_scale, dtype)])


@pytest.mark.parametrize("cache_dtype", FP8)
def test_quantize_kv_reference(cache_dtype):
    """x / scale rounded to nearest even, saturating at the format's largest finite value, and read back
    within one fp8 step."""
    fmt = tuning.kv_format(cache_dtype)
    x = torch.tensor([0.0, 1e-9, -3.0, 1e6, -1e6, 1.0])
    q = tuning.quantize_kv(x, 0.5, cache_dtype)
    assert q.dtype == cache_dtype
    back = tuning.dequantize_kv(q, 0.5)
    assert back[3] == fmt.fp8_max * 0.5 and back[4] == -fmt.fp8_max * 0.5  # clamped, not inf or NaN
    assert back[2] == -3.0 and back[5] == 1.0 and back[0] == 0.0
    y = torch.randn(1000)
    rel = ((tuning.dequantize_kv(tuning.quantize_kv(y, 0.01, cache_dtype), 0.01) - y).abs() / y.abs().clamp(min=0.1))
    assert float(rel.max()) <= 2.0 ** -(fmt.fp8_mant + 1) + 1e-6
    assert tuning.kv_format(torch.bfloat16) == tuning.KVFormat(False)
    assert torch.equal(tuning.quantize_kv(y, 0.01, torch.float16), y.half())  # scales unused without FP8


@pytest.mark.parametrize("cache_dtype", FP8)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_write_kv_cache_fp8_matches_reference(cache_dtype, dtype, device):
    """Every rounding case: random values over the whole fp8 range (carries into the exponent included),
    subnormals, saturation, signed zeros; padding slots write nothing."""
    gen = torch.Generator().manual_seed(0)
    num_tokens, heads, head_size = 6, 2, 64
    scale = 0.05
    key = (torch.rand(num_tokens, heads, head_size, generator=gen) * 2 - 1) * tuning.kv_format(cache_dtype).fp8_max * scale * 1.2
    value = torch.randn(num_tokens, heads, head_size, generator=gen) * scale * 2.0 ** -7  # subnormal range
    key[0, 0, :4] = torch.tensor([0.0, -0.0, 1e30, -1e30])
    key, value = key.to(dtype).to(device), value.to(dtype).to(device)
    slots = torch.tensor([3, -1, 17, 8, 30, 0], dtype=torch.int64, device=device)
    cache = torch.full((2, 4, 8, heads, head_size), float("nan"), device=device).to(cache_dtype)
    ref = cache.clone()
    write_kv_cache(cache, key, value, slots, k_scale=scale, v_scale=scale)
    write_kv_cache_ref(ref, key, value, slots, k_scale=scale, v_scale=scale)
    assert torch.equal(as_bytes(cache), as_bytes(ref))
    torch_cache = torch.full_like(ref, float("nan"))
    torch_write_kv_cache(torch_cache, key, value, slots, k_scale=scale, v_scale=scale)
    assert torch.equal(as_bytes(torch_cache), as_bytes(ref))  # the torch backend's write is the same


@pytest.mark.parametrize("cache_dtype", FP8)
@pytest.mark.parametrize("is_neox,rot_dim", [(True, 32), (False, 16)])
def test_rotary_and_write_kv_fp8_matches_reference(cache_dtype, is_neox, rot_dim, device):
    num_heads, num_kv_heads, head_size = 4, 2, 32
    gen = torch.Generator().manual_seed(1)
    qkv = (torch.randn(5, num_heads + 2 * num_kv_heads, head_size, generator=gen) * 4).to(device)
    cache = torch.zeros(2, 4, 8, num_kv_heads, head_size, device=device).to(cache_dtype)
    cos_sin = build_cos_sin_cache(10000.0, rot_dim, 64, device=device)
    positions = torch.tensor([0, 3, 17, 63, 5], device=device)
    slots = torch.tensor([3, -1, 20, 8, 31], dtype=torch.int64, device=device)

    def run(fn, qkv, cache):
        q, k, v = qkv[:, :num_heads], qkv[:, num_heads:num_heads + num_kv_heads], qkv[:, num_heads + num_kv_heads:]
        fn(positions, q, k, v, cos_sin, cache, slots, is_neox, k_scale=K_SCALE, v_scale=V_SCALE)

    qkv_ref, cache_ref = qkv.clone(), cache.clone()
    run(rotary_and_write_kv_ref, qkv_ref, cache_ref)
    run(rotary_and_write_kv, qkv, cache)
    tol = 0 if device == "cpu" else 1e-5
    torch.testing.assert_close(qkv, qkv_ref, atol=tol, rtol=tol)
    if device == "cpu":
        assert torch.equal(as_bytes(cache), as_bytes(cache_ref))
    else:  # compiled rotary may contract to FMA: an fp8 step apart at most
        torch.testing.assert_close(tuning.dequantize_kv(cache, 1.0), tuning.dequantize_kv(cache_ref, 1.0),
                                   atol=0, rtol=2.0 ** -tuning.kv_format(cache_dtype).fp8_mant)


@pytest.mark.parametrize("cache_dtype", FP8)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_splits", [1, 2])
def test_paged_attention_fp8_matches_reference(cache_dtype, dtype, num_splits, device):
    q, kv, md = make_batch([3, 1, 1], [13, 20, 3], num_heads=4, num_kv_heads=2, head_size=32, block_size=8,
                           dtype=dtype, device=device)
    kv8 = to_fp8(kv, cache_dtype)
    out = paged_attention(q, kv8, md, 0.2, num_splits=num_splits, k_scale=K_SCALE, v_scale=V_SCALE)
    ref = paged_attention_ref(q.cpu(), kv8.cpu(), md.query_start_loc_cpu, md.seq_lens_cpu, md.block_tables.cpu(),
                              0.2, k_scale=K_SCALE, v_scale=V_SCALE)
    n = md.num_tokens
    torch.testing.assert_close(out[:n].float().cpu(), ref[:n].float(), atol=TOL[dtype], rtol=TOL[dtype])
    ref2 = paged_attention_reference(q[:n], kv8, md, 0.2, k_scale=K_SCALE, v_scale=V_SCALE)
    torch.testing.assert_close(out[:n].float(), ref2.float(), atol=TOL[dtype], rtol=TOL[dtype])
    # The scales matter: the same cache read with scale 1 is another result.
    plain = paged_attention_ref(q.cpu(), kv8.cpu(), md.query_start_loc_cpu, md.seq_lens_cpu, md.block_tables.cpu(), 0.2)
    assert not torch.allclose(plain[:n].float(), ref[:n].float(), atol=1e-2)


@pytest.mark.parametrize("cache_dtype", FP8)
@pytest.mark.parametrize("num_splits,rotary", [(1, "neox"), (3, None), (4, "gptj")])
def test_decode_attention_fp8_matches_unfused(cache_dtype, num_splits, rotary, device):
    dtype = torch.float32
    seq_lens = [40, 1, 9]
    query, key, value, kv, md, positions = decode_batch(seq_lens, 4, 2, 32, 8, dtype, device, padding=1)
    kv8 = to_fp8(kv, cache_dtype)
    cos_sin = build_cos_sin_cache(10000.0, 32, 64, device=device) if rotary else None
    is_neox = rotary != "gptj"
    kv_fused, kv_ref = kv8.clone(), kv8.clone()
    out = decode_attention(query, key, value, kv_fused, md, 0.25, num_splits, positions=positions,
                           cos_sin_cache=cos_sin, is_neox=is_neox, k_scale=K_SCALE, v_scale=V_SCALE)
    # Unfused: the fp8 write kernels, then paged attention over the fp8 cache.
    q_rot = query.clone()
    if cos_sin is None:
        write_kv_cache(kv_ref, key, value, md.slot_mapping, k_scale=K_SCALE, v_scale=V_SCALE)
    else:
        rotary_and_write_kv(positions, q_rot, key, value, cos_sin, kv_ref, md.slot_mapping, is_neox,
                            k_scale=K_SCALE, v_scale=V_SCALE)
    ref = paged_attention(q_rot, kv_ref, md, 0.25, num_splits=num_splits, k_scale=K_SCALE, v_scale=V_SCALE)
    n = len(seq_lens)
    if device == "cpu":
        assert torch.equal(as_bytes(kv_fused), as_bytes(kv_ref))
    torch.testing.assert_close(out[:n], ref[:n], atol=TOL[dtype], rtol=TOL[dtype])
    ref32 = paged_attention_ref(q_rot[:n].cpu(), kv_ref.cpu(), list(range(n + 1)), seq_lens, md.block_tables[:n].cpu(),
                                0.25, k_scale=K_SCALE, v_scale=V_SCALE)
    torch.testing.assert_close(out[:n].cpu(), ref32, atol=TOL[dtype], rtol=TOL[dtype])
    # And the unscaled-cache path is untouched by the scales: a float32 cache ignores them.
    plain_kv = kv.clone()
    plain = decode_attention(query, key, value, plain_kv, md, 0.25, num_splits, positions=positions,
                             cos_sin_cache=cos_sin, is_neox=is_neox, k_scale=K_SCALE, v_scale=V_SCALE)
    ref_plain, _ = unfused(query, key, value, kv.clone(), md, positions, cos_sin, is_neox, 0.25, num_splits)
    torch.testing.assert_close(plain[:n], ref_plain[:n], atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("cache_dtype", FP8)
def test_triton_backend_fp8_matches_torch_backend(cache_dtype, device):
    """A prefill chunk and a decode with rotary through both backends: the same fp8 cache bytes (on CPU)
    and the same outputs."""
    num_heads, num_kv_heads, head_size, block_size = 4, 2, 32, 4
    rope = RotaryEmbedding(head_size, 32, 64, 10000.0, True).to(device)
    block_tables = torch.tensor([[5, 1, 0], [2, 4, 3]], dtype=torch.int32)
    positions = torch.tensor([0, 1, 2, 3, 4, 9], device=device)
    slots = [int(block_tables[0, p // block_size]) * block_size + p % block_size for p in range(5)]
    slots += [int(block_tables[1, 9 // block_size]) * block_size + 9 % block_size]
    qsl, seq_lens = [0, 5, 6], [5, 10]
    md = AttentionMetadata(
        num_reqs=2, num_tokens=6, max_query_len=5, max_seq_len=10,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device), slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc_cpu=qsl, seq_lens_cpu=seq_lens,
    )
    gen = torch.Generator().manual_seed(3)
    cache = (torch.randn(2, 6, block_size, num_kv_heads, head_size, generator=gen) * 3).to(device).to(cache_dtype)
    qkv = (torch.randn(6, num_heads + 2 * num_kv_heads, head_size, generator=gen) * 3).to(device)
    rotary = RotaryArgs(positions, rope.cos_sin_cache, rope.is_neox_style, rope)

    def split(x):
        return x[:, :num_heads], x[:, num_heads:num_heads + num_kv_heads], x[:, num_heads + num_kv_heads:]

    cache_torch = cache.clone()
    ref = TorchAttentionBackend().forward(*split(qkv.clone()), cache_torch, md, 0.3, rotary=rotary,
                                          k_scale=K_SCALE * 2, v_scale=V_SCALE * 2)
    out = TritonAttentionBackend().forward(*split(qkv), cache, md, 0.3, rotary=rotary, k_scale=K_SCALE * 2,
                                           v_scale=V_SCALE * 2)
    if device == "cpu":
        assert torch.equal(as_bytes(cache), as_bytes(cache_torch))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
