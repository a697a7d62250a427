"""The fused decode kernel (rotary + KV write + attention + split reduce in one launch) against the
unfused kernels and the torch references, on CPU through Triton's interpreter and on CUDA."""

from __future__ import annotations

import pytest
import torch
from test_paged_attention import make_batch

from pagoda.attention.backend import AttentionMetadata
from pagoda.kernels.decode_attention import decode_attention
from pagoda.kernels.kv_cache_write import write_kv_cache
from pagoda.kernels.paged_attention import paged_attention, paged_attention_ref
from pagoda.kernels.rotary import build_cos_sin_cache
from pagoda.kernels.rotary_kv import rotary_and_write_kv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def decode_batch(seq_lens, num_heads, num_kv_heads, head_size, block_size, dtype, device, seed=0, padding=0):
    """A decode step: each request's cached prefix (seq_len - 1 positions) plus a new token whose key
    and value are not in the cache yet; `padding` extra rows as a CUDA graph pads them (seq_len 1, slot -1)."""
    q, kv, md = make_batch([1] * len(seq_lens), seq_lens, num_heads=num_heads, num_kv_heads=num_kv_heads,
                           head_size=head_size, block_size=block_size, dtype=dtype, device=device, seed=seed)
    bt = md.block_tables.cpu()
    slots = [int(bt[i, (s - 1) // block_size]) * block_size + (s - 1) % block_size for i, s in enumerate(seq_lens)]
    kv[:, torch.tensor(slots) // block_size, torch.tensor(slots) % block_size] = float("nan")  # not written yet
    n = len(seq_lens) + padding
    gen = torch.Generator().manual_seed(seed + 100)
    qkv = torch.randn(n, num_heads + 2 * num_kv_heads, head_size, generator=gen).to(dtype).to(device)
    query = qkv[:, :num_heads]
    key = qkv[:, num_heads : num_heads + num_kv_heads]
    value = qkv[:, num_heads + num_kv_heads :]
    md = AttentionMetadata(
        num_reqs=n, num_tokens=n, max_query_len=1, max_seq_len=max(seq_lens),
        query_start_loc=torch.arange(n + 1, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(list(seq_lens) + [1] * padding, dtype=torch.int32, device=device),
        block_tables=torch.cat([md.block_tables, torch.zeros(padding, md.block_tables.shape[1], dtype=torch.int32,
                                                              device=device)]),
        slot_mapping=torch.tensor(slots + [-1] * padding, dtype=torch.int64, device=device),
        query_start_loc_cpu=list(range(n + 1)), seq_lens_cpu=list(seq_lens) + [1] * padding,
    )
    positions = torch.tensor([s - 1 for s in seq_lens] + [0] * padding, device=device)
    return query, key, value, kv, md, positions


def unfused(query, key, value, kv, md, positions, cos_sin, is_neox, scale, num_splits):
    query = query.clone()
    if cos_sin is None:
        write_kv_cache(kv, key, value, md.slot_mapping)
    else:
        rotary_and_write_kv(positions, query, key, value, cos_sin, kv, md.slot_mapping, is_neox)
    return paged_attention(query, kv, md, scale, num_splits=num_splits), query


@pytest.mark.parametrize("num_splits", [1, 3, 4])
@pytest.mark.parametrize("rotary", ["neox", "gptj", "partial", None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_matches_unfused(num_splits, rotary, dtype, device):
    num_heads, num_kv_heads, head_size, block_size = 8, 2, 32, 8
    seq_lens = [70, 1, 9, 33]  # one request at its first token, uneven splits
    query, key, value, kv, md, positions = decode_batch(seq_lens, num_heads, num_kv_heads, head_size, block_size,
                                                        dtype, device, padding=1)
    cos_sin = None
    if rotary is not None:
        cos_sin = build_cos_sin_cache(10000.0, 16 if rotary == "partial" else head_size, 128, device=device)
    is_neox = rotary != "gptj"
    kv_fused, kv_ref = kv.clone(), kv.clone()
    query_before, key_before = query.clone(), key.clone()
    out = decode_attention(query, key, value, kv_fused, md, 0.25, num_splits, positions=positions,
                           cos_sin_cache=cos_sin, is_neox=is_neox)
    ref, rotated_query = unfused(query, key, value, kv_ref, md, positions, cos_sin, is_neox, 0.25, num_splits)
    n = len(seq_lens)
    torch.testing.assert_close(kv_fused, kv_ref, equal_nan=True, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(out[:n].float(), ref[:n].float(), atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(query, query_before) and torch.equal(key, key_before)  # inputs only read
    # And against the fp32 torch reference over the cache the unfused path wrote.
    ref32 = paged_attention_ref(rotated_query[:n].cpu(), kv_ref.cpu(), list(range(n + 1)), seq_lens,
                                md.block_tables[:n].cpu(), 0.25)
    torch.testing.assert_close(out[:n].float().cpu(), ref32.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("num_splits", [4, 32])  # 32: most splits idle, as in a graph sized for max_model_len
def test_decode_attention_counters_reset_between_calls(num_splits, device):
    """The split counters return to zero, so repeated launches (as CUDA-graph replays) stay right,
    and idle splits (past the request's last tile) change nothing."""
    from pagoda.kernels import decode_attention as module

    query, key, value, kv, md, positions = decode_batch([140, 17], 4, 1, 32, 8, torch.float32, device, seed=3)
    first = decode_attention(query, key, value, kv.clone(), md, 0.3, num_splits)
    second = decode_attention(query, key, value, kv.clone(), md, 0.3, num_splits)
    assert torch.equal(first, second)
    ref, _ = unfused(query, key, value, kv.clone(), md, positions, None, True, 0.3, num_splits)
    torch.testing.assert_close(first, ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])
    assert int(module._counters[(query.device.type, query.device.index)].abs().sum()) == 0


def test_decode_attention_rejects_prefill(device):
    q, kv, md = make_batch([2], [5], num_heads=2, num_kv_heads=1, head_size=16, block_size=8,
                           dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="decode-only"):
        decode_attention(q, q[:, :1], q[:, :1], kv, md, 0.1, 1)


@pytest.mark.parametrize("num_splits", [4, 33])  # 33: partials too many for registers, reduced head by head
def test_decode_attention_odd_group_and_head_size(num_splits, device):
    """Group 3 (padded to 4 rows) and head size 80 (padded to 128), against the unfused kernels."""
    query, key, value, kv, md, positions = decode_batch([70, 5], 6, 2, 80, 16, torch.float32, device, seed=7)
    cos_sin = build_cos_sin_cache(10000.0, 80, 128, device=device)
    kv_fused, kv_ref = kv.clone(), kv.clone()
    out = decode_attention(query, key, value, kv_fused, md, 0.1, num_splits, positions=positions, cos_sin_cache=cos_sin)
    ref, _ = unfused(query, key, value, kv_ref, md, positions, cos_sin, True, 0.1, num_splits)
    torch.testing.assert_close(kv_fused, kv_ref, equal_nan=True, atol=TOL[torch.float32], rtol=TOL[torch.float32])
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])
