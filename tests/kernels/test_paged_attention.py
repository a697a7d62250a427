"""Paged attention kernel vs. torch references: ragged mixed batches, GQA, block sizes, split-KV."""

from __future__ import annotations

import random

import pytest
import torch

from pagoda.attention.backend import AttentionMetadata
from pagoda.attention.torch_backend import paged_attention_reference, write_kv_cache
from pagoda.kernels.paged_attention import paged_attention, paged_attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 tl.dot is wrong in Triton's interpreter, so bf16 runs only on CUDA.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def make_batch(query_lens, seq_lens, *, num_heads, num_kv_heads, head_size, block_size, dtype, device, seed=0,
               pad_tokens=0):
    """A random batch: each request's blocks are scattered randomly over the cache; the whole cached
    prefix plus this step's tokens are written through write_kv_cache. Unused cache is NaN so that any
    read past a request's length shows up."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    blocks_per_req = [(s + block_size - 1) // block_size for s in seq_lens]
    max_blocks = max(blocks_per_req)
    num_blocks = sum(blocks_per_req) + 3
    perm = list(range(num_blocks))
    rng.shuffle(perm)
    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_size), float("nan"), dtype=dtype)
    block_tables = torch.full((len(seq_lens), max_blocks + 1), 10_000, dtype=torch.int32)  # padding garbage
    it = iter(perm)
    for i, nb in enumerate(blocks_per_req):
        for b in range(nb):
            block_tables[i, b] = next(it)
    slots = []
    for i, s in enumerate(seq_lens):
        for pos in range(s):
            slots.append(int(block_tables[i, pos // block_size]) * block_size + pos % block_size)
    slots = torch.tensor(slots, dtype=torch.int64)
    keys = torch.randn(len(slots), num_kv_heads, head_size, generator=gen).to(dtype)
    values = torch.randn(len(slots), num_kv_heads, head_size, generator=gen).to(dtype)
    write_kv_cache(kv_cache, keys, values, slots)
    num_tokens = sum(query_lens)
    query = torch.randn(num_tokens + pad_tokens, num_heads, head_size, generator=gen).to(dtype)
    qsl = [0]
    for q in query_lens:
        qsl.append(qsl[-1] + q)
    metadata = AttentionMetadata(
        num_reqs=len(seq_lens),
        num_tokens=num_tokens,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.zeros(num_tokens, dtype=torch.int64, device=device),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=list(seq_lens),
    )
    return query.to(device), kv_cache.to(device), metadata

# (query_lens, seq_lens): decode-only, prefill from scratch, chunk with cached prefix, mixed ragged.
BATCHES = {
    "mixed": ([5, 1, 1], [13, 20, 3]),
    "prefill": ([7], [7]),
    "chunk_and_prefill": ([4, 6], [37, 6]),
    "decode": ([1, 1], [33, 9]),
    "empty_req": ([3, 0, 1], [10, 5, 17]),
}


def check(query, kv_cache, metadata, scale, dtype, **kw):
    out = paged_attention(query, kv_cache, metadata, scale, **kw)
    n = metadata.num_tokens
    ref = paged_attention_ref(query.cpu(), kv_cache.cpu(), metadata.query_start_loc_cpu, metadata.seq_lens_cpu,
                              metadata.block_tables.cpu(), scale)
    torch.testing.assert_close(out[:n].float().cpu(), ref[:n].float(), atol=TOL[dtype], rtol=TOL[dtype])
    if query.is_contiguous():
        ref2 = paged_attention_reference(query[:n], kv_cache, metadata, scale)
        torch.testing.assert_close(out[:n].float(), ref2.float(), atol=TOL[dtype], rtol=TOL[dtype])
    return out


@pytest.mark.parametrize(
    "batch,block_size,num_kv_heads,group,head_size",
    [
        ("mixed", 8, 2, 2, 32),
        ("mixed", 16, 1, 4, 64),
        ("prefill", 32, 2, 1, 32),
        ("chunk_and_prefill", 8, 1, 2, 64),
        ("decode", 16, 2, 4, 32),
        ("empty_req", 32, 1, 1, 32),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention(batch, block_size, num_kv_heads, group, head_size, dtype, device):
    query_lens, seq_lens = BATCHES[batch]
    q, kv, md = make_batch(query_lens, seq_lens, num_heads=num_kv_heads * group, num_kv_heads=num_kv_heads,
                           head_size=head_size, block_size=block_size, dtype=dtype, device=device)
    check(q, kv, md, head_size**-0.5, dtype)


@pytest.mark.parametrize("num_splits", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_split_kv(num_splits, dtype, device):
    # Decodes with long-ish contexts, one speculative-style short chunk, one request shorter than a split.
    q, kv, md = make_batch([1, 3, 1], [70, 41, 2], num_heads=4, num_kv_heads=2, head_size=32, block_size=8,
                           dtype=dtype, device=device, seed=1)
    check(q, kv, md, 0.3, dtype, num_splits=num_splits)


@pytest.mark.parametrize("unmasked_tiles", [False, True])
@pytest.mark.parametrize("group,dtype", [(1, torch.float32), (4, torch.float16)])
def test_paged_attention_long_rows_cross_unmasked_tiles(group, dtype, unmasked_tiles, device, monkeypatch):
    """Contexts of several 64-position tiles, with one masked tile loop and with tuning.ATTN_UNMASKED_TILES (the
    tiles wholly before a query block's first position without masks, the diagonal and the chunk's end with
    them): a prefill from scratch, a chunk after a cached prefix, decodes, a chunk whose first block starts
    mid-tile."""
    from pagoda.kernels import tuning

    monkeypatch.setattr(tuning, "ATTN_UNMASKED_TILES", unmasked_tiles)
    q, kv, md = make_batch([150, 1, 40, 1, 77], [150, 300, 233, 129, 205], num_heads=2 * group, num_kv_heads=2,
                           head_size=32, block_size=16, dtype=dtype, device=device, seed=5)
    check(q, kv, md, 32**-0.5, dtype)
    check(q, kv, md, 32**-0.5, dtype, num_splits=3)


def test_paged_attention_odd_head_size_and_group(device):
    # head_size 80 is padded to 128 with masks; group 3 leaves padding rows in each program.
    q, kv, md = make_batch([2, 1], [11, 6], num_heads=6, num_kv_heads=2, head_size=80, block_size=16,
                           dtype=torch.float32, device=device, seed=2)
    check(q, kv, md, 0.1, torch.float32)
    check(q, kv, md, 0.1, torch.float32, num_splits=2)


def test_paged_attention_strided_query_and_padding_tokens(device):
    # Query is a view into a wider qkv buffer, and the batch has padding rows past query_start_loc[-1]
    # (as in a CUDA-graph padded decode batch); the padded rows of `out` are left alone.
    dtype = torch.float16
    q, kv, md = make_batch([1, 2], [9, 17], num_heads=4, num_kv_heads=2, head_size=32, block_size=8,
                           dtype=dtype, device=device, seed=3, pad_tokens=2)
    qkv = torch.zeros(q.shape[0], 8 * 32, dtype=dtype, device=device)
    qkv[:, : 4 * 32] = q.reshape(q.shape[0], -1)
    q_view = qkv[:, : 4 * 32].view(q.shape[0], 4, 32)
    out = torch.full_like(q, 7.0)
    check(q_view, kv, md, 0.2, dtype, out=out)
    assert torch.all(out[md.num_tokens :] == 7.0)


def test_split_heuristic():
    from pagoda.kernels import tuning

    common = dict(num_heads=32, num_kv_heads=8, head_size=128, device=torch.device("cpu"))
    long_decode = tuning.attention_launch(num_reqs=2, num_tokens=2, max_query_len=1, max_seq_len=8192, **common)
    assert long_decode.num_splits > 1
    big_batch = tuning.attention_launch(num_reqs=256, num_tokens=256, max_query_len=1, max_seq_len=8192, **common)
    assert big_batch.num_splits == 1
    short = tuning.attention_launch(num_reqs=2, num_tokens=2, max_query_len=1, max_seq_len=200, **common)
    assert short.num_splits == 1
    prefill = tuning.attention_launch(num_reqs=1, num_tokens=512, max_query_len=512, max_seq_len=8192, **common)
    assert prefill.num_splits == 1 and prefill.block_m >= 16 and prefill.block_q * 4 == prefill.block_m


def test_triton_backend_matches_torch_backend(device):
    from pagoda.attention.torch_backend import TorchAttentionBackend
    from pagoda.attention.triton_backend import TritonAttentionBackend

    dtype = torch.float16
    # Step tokens: request 0 is a 3-token chunk at positions 5..7, request 1 decodes position 12;
    # the last token is padding (slot -1). Earlier positions are already cached.
    q, kv, md = make_batch([3, 1], [8, 13], num_heads=4, num_kv_heads=2, head_size=32, block_size=8,
                           dtype=dtype, device=device, seed=4, pad_tokens=1)
    bt = md.block_tables.cpu()
    slots = [int(bt[0, p // 8]) * 8 + p % 8 for p in (5, 6, 7)] + [int(bt[1, 12 // 8]) * 8 + 12 % 8] + [-1]
    md.slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    gen = torch.Generator().manual_seed(5)
    key = torch.randn(5, 2, 32, generator=gen).to(dtype).to(device)
    value = torch.randn(5, 2, 32, generator=gen).to(dtype).to(device)
    kv_triton, kv_torch = kv.clone(), kv.clone()
    out = TritonAttentionBackend().forward(q, key, value, kv_triton, md, 0.2)
    # The torch backend has no padding-slot convention: give it the real tokens only.
    md_torch = AttentionMetadata(**{**md.__dict__, "slot_mapping": md.slot_mapping[:4]})
    ref = TorchAttentionBackend().forward(q[:4], key[:4], value[:4], kv_torch, md_torch, 0.2)
    assert TritonAttentionBackend.name == "triton"
    torch.testing.assert_close(kv_triton, kv_torch, equal_nan=True)
    torch.testing.assert_close(out[:4], ref, atol=TOL[dtype], rtol=TOL[dtype])
