"""Cascade attention: the shared-prefix pass vs. its torch reference, and paged attention seeded with the
prefix state vs. full paged attention over the whole sequences (mixed batches, GQA, block and head sizes,
split-KV, FP8 caches, P == 0 bitwise = no prefix, CUDA-graph padding requests, P changed in place)."""

from __future__ import annotations

import pytest
import torch
from test_fp8_kv_cache import K_SCALE, V_SCALE, to_fp8
from test_paged_attention import DEVICE, TOL, make_batch

from pagoda.kernels.cascade_attention import prefix_attention, prefix_attention_ref
from pagoda.kernels.paged_attention import PrefixState, paged_attention, paged_attention_ref

# bf16 tl.dot is wrong in Triton's interpreter, so bf16 runs only on CUDA.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def shared_batch(query_lens, seq_lens, num_prefix, *, group, head_size, block_size, dtype, device,
                 num_kv_heads=2, shared=None, seed=0):
    """make_batch with the first `num_prefix` block-table entries of the requests in `shared` (default: all)
    pointing at request 0's blocks, as prefix caching leaves them."""
    q, kv, md = make_batch(query_lens, seq_lens, num_heads=num_kv_heads * group, num_kv_heads=num_kv_heads,
                           head_size=head_size, block_size=block_size, dtype=dtype, device=device, seed=seed)
    bt = md.block_tables
    for i in range(len(seq_lens)) if shared is None else shared:
        bt[i, :num_prefix] = bt[0, :num_prefix]
    return q, kv, md


def full_ref(q, kv, md, scale, **scales):
    return paged_attention_ref(q.cpu(), kv.cpu(), md.query_start_loc_cpu, md.seq_lens_cpu, md.block_tables.cpu(),
                               scale, **scales)


def cascade(q, kv, md, num_prefix, scale, num_splits=None, **scales):
    pb = torch.tensor([num_prefix], dtype=torch.int32, device=q.device)
    out, lse = prefix_attention(q, kv, md.block_tables[0], pb, scale, **scales)
    return paged_attention(q, kv, md, scale, num_splits=num_splits, prefix=PrefixState(pb, out, lse), **scales)


def close(out, ref, n, dtype):
    torch.testing.assert_close(out[:n].float().cpu(), ref[:n].float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize(
    "dtype,group,head_size,block_size,num_tokens",
    [(torch.float32, 1, 64, 16, 7), (torch.float32, 4, 80, 32, 5)]
    + [(d, 4, 64, 16, 9) for d in DTYPES if d != torch.float32],
)
def test_prefix_attention_matches_ref(dtype, group, head_size, block_size, num_tokens, device):
    # num_tokens * group is not a multiple of BLOCK_M; 48 prefix positions are not a multiple of TILE_N.
    num_prefix = 48 // block_size + (block_size == 32)
    q, kv, md = shared_batch([num_tokens], [num_tokens + 70], num_prefix, group=group, head_size=head_size,
                             block_size=block_size, dtype=dtype, device=device)
    pb = torch.tensor([num_prefix], dtype=torch.int32, device=device)
    out, lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.125)
    ref_out, ref_lse = prefix_attention_ref(q.cpu(), kv.cpu(), md.block_tables[0].cpu(), num_prefix, 0.125)
    assert out.dtype == lse.dtype == torch.float32 and out.shape == q.shape and lse.shape == q.shape[:2]
    tol = 1e-4 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(out.cpu(), ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=tol, rtol=tol)
    # lse is base 2 of the scaled scores: log2 sum exp2(q.k * scale * log2 e).
    bt0 = md.block_tables[0, :num_prefix].long().cpu()
    k = kv[0].cpu()[bt0, :, 0].reshape(-1, head_size).float()  # KV head 0's prefix keys, in position order
    s = (k @ q[-1, 0].float().cpu()) * 0.125 * 1.4426950408889634
    torch.testing.assert_close(lse[-1, 0].cpu(), torch.log2(torch.exp2(s).sum()), atol=tol, rtol=tol)
    # P is read from the tensor: one block fewer is another result.
    other, other_lse = prefix_attention_ref(q.cpu(), kv.cpu(), md.block_tables[0].cpu(), num_prefix - 1, 0.125)
    assert not torch.allclose(other_lse, lse.cpu(), atol=1e-2)
    pb.fill_(num_prefix - 1)
    out2, lse2 = prefix_attention(q, kv, md.block_tables[0], pb, 0.125)
    torch.testing.assert_close(lse2.cpu(), other_lse, atol=tol, rtol=tol)


# Mixed batch: a prefill chunk whose cached length (48) is at least the prefix, decodes, a 3-token verify chunk.
MIXED = ([5, 1, 1, 3], [53, 130, 50, 52])


@pytest.mark.parametrize(
    "dtype,group,head_size,block_size,num_prefix,num_splits",
    [
        (torch.float32, 1, 64, 16, 2, 1),
        (torch.float32, 4, 64, 32, 1, 3),
        (torch.float32, 1, 80, 16, 3, 3),
        (torch.float16, 4, 80, 16, 2, 1),
    ]
    + ([(torch.bfloat16, 4, 64, 16, 2, 3)] if DEVICE == "cuda" else []),
)
def test_cascade_matches_full_attention(dtype, group, head_size, block_size, num_prefix, num_splits, device):
    q, kv, md = shared_batch(*MIXED, num_prefix, group=group, head_size=head_size, block_size=block_size,
                             dtype=dtype, device=device, seed=1)
    scale = head_size**-0.5
    ref = full_ref(q, kv, md, scale)
    out = cascade(q, kv, md, num_prefix, scale, num_splits=num_splits)
    close(out, ref, md.num_tokens, dtype)
    # The seed matters: a wrong lse (prefix weight) or a suffix that skips one block too many is another result.
    pb = torch.tensor([num_prefix], dtype=torch.int32, device=device)
    p_out, p_lse = prefix_attention(q, kv, md.block_tables[0], pb, scale)
    bad = paged_attention(q, kv, md, scale, num_splits=num_splits, prefix=PrefixState(pb, p_out, p_lse + 1.0))
    assert not torch.allclose(bad[: md.num_tokens].float().cpu(), ref[: md.num_tokens].float(), atol=1e-2)
    pb_more = torch.tensor([num_prefix + 1], dtype=torch.int32, device=device)
    bad = paged_attention(q, kv, md, scale, num_splits=num_splits, prefix=PrefixState(pb_more, p_out, p_lse))
    assert not torch.allclose(bad[: md.num_tokens].float().cpu(), ref[: md.num_tokens].float(), atol=1e-2)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_cascade_fp8_cache(num_splits, device):
    q, kv, md = shared_batch(*MIXED, 2, group=2, head_size=64, block_size=16, dtype=torch.float16, device=device,
                             seed=2)
    kv8 = to_fp8(kv, torch.float8_e4m3fn)
    scales = dict(k_scale=K_SCALE, v_scale=V_SCALE)
    ref = full_ref(q, kv8, md, 0.2, **scales)
    close(cascade(q, kv8, md, 2, 0.2, num_splits=num_splits, **scales), ref, md.num_tokens, torch.float16)
    pb = torch.tensor([2], dtype=torch.int32, device=device)
    out, lse = prefix_attention(q, kv8, md.block_tables[0], pb, 0.2, **scales)
    ref_out, ref_lse = prefix_attention_ref(q.cpu(), kv8.cpu(), md.block_tables[0].cpu(), 2, 0.2, **scales)
    torch.testing.assert_close(out.cpu(), ref_out, atol=3e-3, rtol=3e-3)
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=3e-3, rtol=3e-3)
    # The scales matter (the v_scale division of the seed included): unscaled is another result.
    plain = full_ref(q, kv8, md, 0.2)
    assert not torch.allclose(plain[: md.num_tokens].float(), ref[: md.num_tokens].float(), atol=1e-2)


@pytest.mark.parametrize("dtype,num_splits", [(torch.float32, 1), (torch.float16, 3)])
def test_zero_prefix_is_bitwise_no_prefix(dtype, num_splits, device):
    q, kv, md = shared_batch(*MIXED, 0, group=2, head_size=64, block_size=16, dtype=dtype, device=device, seed=3)
    pb = torch.zeros(1, dtype=torch.int32, device=device)
    out, lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.3)  # must not fault; out / lse are left unwritten
    plain = paged_attention(q, kv, md, 0.3, num_splits=num_splits)
    # Garbage state is never read when P == 0.
    nan_state = PrefixState(pb, torch.full_like(out, float("nan")), torch.full_like(lse, float("nan")))
    for state in (PrefixState(pb, out, lse), nan_state):
        assert torch.equal(paged_attention(q, kv, md, 0.3, num_splits=num_splits, prefix=state), plain)
    close(plain, full_ref(q, kv, md, 0.3), md.num_tokens, dtype)
    # ... and read when P > 0: the same NaN state poisons the result.
    poisoned = paged_attention(q, kv, md, 0.3, num_splits=num_splits, prefix=nan_state._replace(prefix_blocks=pb + 1))
    assert torch.isnan(poisoned[: md.num_tokens]).any()


def test_padding_request_and_replay_with_new_prefix(device):
    # Request 2 is CUDA-graph padding (seq_len 1 < P * block_size, its block-table row garbage past its one
    # block): it must not fault, and the real rows stay exact. Then P changes in place on the same tensors
    # (a graph replay) and the results follow it.
    q, kv, md = shared_batch([5, 1, 1, 1], [45, 130, 1, 50], 2, group=2, head_size=64, block_size=16,
                             dtype=torch.float32, device=device, seed=4, shared=[0, 1, 3])
    real = [0, 1, 2, 3, 4, 5, 7]  # token rows of requests 0, 1, 3
    ref = full_ref(q, kv, md, 0.25)
    pb = torch.tensor([2], dtype=torch.int32, device=device)
    p_out, p_lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.25)
    state = PrefixState(pb, p_out, p_lse)
    for splits in (1, 3):
        out = paged_attention(q, kv, md, 0.25, num_splits=splits, prefix=state)
        close(out[real], ref[real], len(real), torch.float32)
    pb.fill_(1)  # the same launches with P = 1, read from the tensor
    p_out, p_lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.25)
    out = paged_attention(q, kv, md, 0.25, num_splits=3, prefix=PrefixState(pb, p_out, p_lse))
    close(out[real], ref[real], len(real), torch.float32)


@pytest.mark.parametrize("prefix_splits", [2, 3, 8])
def test_prefix_split_kv_merges_to_the_one_pass_result(prefix_splits, device):
    """The prefix pass cut into runs of tiles (more programs for steps with few rows) and merged: the same
    out / lse as one pass, up to fp32 rounding; more splits than tiles leave empty runs of weight 0; P == 0
    faults nowhere, and P changed in place is followed."""
    q, kv, md = shared_batch(*MIXED, 3, group=2, head_size=64, block_size=16, dtype=torch.float32, device=device)
    pb = torch.tensor([3], dtype=torch.int32, device=device)  # 48 positions: 2 tiles of 32 under the interpreter
    one, one_lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.2, num_splits=1)
    out, lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.2, num_splits=prefix_splits)
    torch.testing.assert_close(out, one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, one_lse, atol=1e-5, rtol=1e-5)
    pb.fill_(1)
    ref_out, ref_lse = prefix_attention_ref(q.cpu(), kv.cpu(), md.block_tables[0].cpu(), 1, 0.2)
    out, lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.2, num_splits=prefix_splits)
    torch.testing.assert_close(out.cpu(), ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse.cpu(), ref_lse, atol=1e-4, rtol=1e-4)
    pb.fill_(0)
    prefix_attention(q, kv, md.block_tables[0], pb, 0.2, num_splits=prefix_splits)  # must not fault
    # End to end: the split prefix state resumes paged attention to the full result.
    pb.fill_(3)
    out, lse = prefix_attention(q, kv, md.block_tables[0], pb, 0.2, num_splits=prefix_splits)
    full = paged_attention(q, kv, md, 0.2, prefix=PrefixState(pb, out, lse))
    close(full, full_ref(q, kv, md, 0.2), md.num_tokens, torch.float32)


def test_prefix_splits_env(monkeypatch):
    from pagoda.kernels import tuning

    assert tuning.prefix_attention_splits(num_programs=8, device=torch.device("cpu")) == 1
    monkeypatch.setenv(tuning.PREFIX_SPLITS_ENV, "4")
    assert tuning.prefix_attention_splits(num_programs=8, device=torch.device("cpu")) == 4
    monkeypatch.setenv(tuning.PREFIX_SPLITS_ENV, "0")
    with pytest.raises(ValueError, match=tuning.PREFIX_SPLITS_ENV):
        tuning.prefix_attention_splits(num_programs=8, device=torch.device("cpu"))
