"""The attention backend owns its launch choices (attention/backend.py): every AttentionMetadata of a
runner comes from its AttentionMetadataBuilder, which gives a decode-only batch of n requests the
backend's split-KV count for n's CUDA-graph bucket and max_model_len, so a graph captured at bucket
size s and an eager decode of any n in that bucket split alike (the bf16 bitwise-identity invariant of
worker/cuda_graph.py). Host-side choices on ints only: tested on CPU with a CUDA device object."""

import pytest
import torch

from pagoda.attention.torch_backend import TorchAttentionBackend
from pagoda.kernels import tuning
from pagoda.worker.cuda_graph import capture_sizes

MAX_NUM_SEQS, MAX_LEN = 300, 8192
SHAPE = dict(num_heads=32, num_kv_heads=8, head_size=128)


def _builder(backend, device="cuda"):
    return backend.metadata_builder(batch_buckets=capture_sizes(MAX_NUM_SEQS), max_model_len=MAX_LEN,
                                    device=torch.device(device), **SHAPE)


def _build(builder, num_reqs, query_len=1, seq_len=5):
    n = num_reqs * query_len
    return builder.build(
        num_reqs=num_reqs, num_tokens=n, max_query_len=query_len, max_seq_len=seq_len,
        query_start_loc=torch.arange(0, n + 1, query_len, dtype=torch.int32),
        seq_lens=torch.full((num_reqs,), seq_len, dtype=torch.int32),
        block_tables=torch.zeros(num_reqs, 1, dtype=torch.int32), slot_mapping=torch.full((n,), -1),
        query_start_loc_cpu=list(range(0, n + 1, query_len)), seq_lens_cpu=[seq_len] * num_reqs,
    )


def test_triton_decode_splits_follow_the_bucket_not_the_step():
    pytest.importorskip("triton")
    from pagoda.attention.triton_backend import TritonAttentionBackend

    builder = _builder(TritonAttentionBackend())
    sizes = capture_sizes(MAX_NUM_SEQS)
    seen = set()
    for n in range(1, MAX_NUM_SEQS + 1):
        bucket = next(s for s in sizes if s >= n)
        expected = tuning.attention_launch(num_reqs=bucket, num_tokens=bucket, max_query_len=1, max_seq_len=MAX_LEN,
                                           device=torch.device("cuda"), **SHAPE).num_splits
        eager = _build(builder, n, seq_len=3 + n)  # the step's real lengths play no part
        assert eager.num_splits == builder.decode_splits(bucket) == expected  # graph of size `bucket` == eager n
        seen.add(expected)
    assert len(seen) > 1  # the policy does split (small batches, long max_model_len), differently by bucket
    assert _build(builder, 4, query_len=2).num_splits is None  # not decode-only: the kernel chooses
    assert _build(builder, MAX_NUM_SEQS + 7).num_splits == builder.decode_splits(MAX_NUM_SEQS + 7)  # past the buckets
    assert _builder(TritonAttentionBackend(), "cpu").decode_splits(1) is None  # off CUDA (interpreter): as before


def test_torch_backend_does_not_split():
    builder = _builder(TorchAttentionBackend())
    assert _build(builder, 3).num_splits is None and _build(builder, 1).is_all_decode
