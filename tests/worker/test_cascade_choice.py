"""When a step runs cascade attention (attention/cascade.py): the shared leading blocks of the step's rows,
capped by what every request has computed; the cost model; the backend choice; CUDA graphs' prefix buffer."""

import numpy as np
import pytest
import torch

from pagoda.attention import backend as attn_backend
from pagoda.attention import cascade
from pagoda.attention.torch_backend import TorchAttentionBackend
from pagoda.worker.cuda_graph import capture_sizes


def test_common_prefix_blocks_counts_shared_leading_columns():
    table = np.zeros((6, 8), dtype=np.int32)
    table[:, :5] = [10, 11, 12, 13, 14]  # every row starts with the same five blocks
    table[:, 5:] = np.arange(18).reshape(6, 3) + 100  # then its own
    table[2, 4] = 99  # row 2 differs at column 4
    rows, computed = np.array([0, 1, 3, 4]), np.full(4, 8 * 16)
    assert cascade.common_prefix_blocks(table, rows, computed, 16) == 5
    assert cascade.common_prefix_blocks(table, np.array([0, 1, 2]), np.full(3, 128), 16) == 4
    # Capped so that every query follows the prefix: one request has computed only 3 blocks and a half.
    assert cascade.common_prefix_blocks(table, rows, np.array([128, 128, 56, 128]), 16) == 3
    assert cascade.common_prefix_blocks(table, rows, np.array([128, 0, 128, 128]), 16) == 0  # a fresh prompt
    assert cascade.common_prefix_blocks(table, np.array([0]), np.array([128]), 16) == 0  # one request: nothing shared
    table[:, 0] = np.arange(6)
    assert cascade.common_prefix_blocks(table, rows, computed, 16) == 0


def test_cost_model_prefers_cascade_for_many_requests_on_a_long_prefix():
    shape = dict(num_heads=32, num_kv_heads=8)
    assert cascade.use_cascade(prefix_tokens=1008, num_reqs=1000, num_tokens=1000, **shape)  # W8's decode
    assert cascade.use_cascade(prefix_tokens=1008, num_reqs=72, num_tokens=72, **shape)
    assert not cascade.use_cascade(prefix_tokens=240, num_reqs=1000, num_tokens=1000, **shape)  # prefix too short
    assert not cascade.use_cascade(prefix_tokens=4096, num_reqs=64, num_tokens=64, **shape)  # the decode kernel's
    # Prefill chunks read the prefix once per query block of paged attention, so they gain too.
    assert cascade.use_cascade(prefix_tokens=512, num_reqs=65, num_tokens=65 * 512, **shape)
    # Few programs for the prefix pass against many per-request ones: 1 wave x 8 tiles vs 1 wave x 4 tiles.
    assert not cascade.use_cascade(prefix_tokens=512, num_reqs=66, num_tokens=66, num_heads=8, num_kv_heads=1,
                                   num_sms=1024)


def test_cascade_env_is_checked(monkeypatch):
    monkeypatch.setenv(cascade.CASCADE_ENV, "0")
    assert not cascade.cascade_enabled()
    monkeypatch.setenv(cascade.CASCADE_ENV, "yes")
    with pytest.raises(ValueError, match=cascade.CASCADE_ENV):
        cascade.cascade_enabled()


def test_attention_backend_env(monkeypatch):
    monkeypatch.setenv(attn_backend.ATTENTION_BACKEND_ENV, "torch")
    assert attn_backend.get_attention_backend("cuda").name == "torch"
    monkeypatch.setenv(attn_backend.ATTENTION_BACKEND_ENV, "flash")
    with pytest.raises(ValueError, match="auto.*triton.*torch"):
        attn_backend.get_attention_backend("cpu")
    monkeypatch.setenv(attn_backend.ATTENTION_BACKEND_ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        attn_backend.get_attention_backend("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    assert attn_backend.get_attention_backend("cpu").supports_cascade


def _builder(backend):
    return backend.metadata_builder(batch_buckets=capture_sizes(128), max_model_len=4096, num_heads=32,
                                    num_kv_heads=8, head_size=128, device=torch.device("cpu"))


def test_builder_refuses_cascade_where_the_backend_has_none():
    builder = _builder(TorchAttentionBackend())
    assert builder.cascade_prefix_blocks(63, 16, num_reqs=1000, num_tokens=1000) == 0
    with pytest.raises(ValueError, match="cascade"):
        builder.build(num_reqs=1, num_tokens=1, max_query_len=1, max_seq_len=2,
                      query_start_loc=torch.tensor([0, 1], dtype=torch.int32), seq_lens=torch.tensor([2], dtype=torch.int32),
                      block_tables=torch.zeros(1, 1, dtype=torch.int32), slot_mapping=torch.zeros(1, dtype=torch.long),
                      query_start_loc_cpu=[0, 1], seq_lens_cpu=[2], prefix_blocks=torch.zeros(1, dtype=torch.int32))


def test_triton_builder_takes_every_shared_block_when_it_pays():
    pytest.importorskip("triton")
    from pagoda.attention.triton_backend import TritonAttentionBackend

    builder = _builder(TritonAttentionBackend())
    assert builder.cascade_prefix_blocks(63, 16, num_reqs=1000, num_tokens=1000) == 63
    assert builder.cascade_prefix_blocks(63, 16, num_reqs=8, num_tokens=8) == 0
    assert builder.cascade_prefix_blocks(0, 16, num_reqs=1000, num_tokens=1000) == 0


class _Metadata:
    def __init__(self, num_reqs, prefix_blocks=None):
        self.num_reqs, self.num_tokens, self.max_query_len, self.prefix_blocks = num_reqs, num_reqs, 1, prefix_blocks


@pytest.mark.parametrize("cascade_graphs", [False, True])
def test_graphs_carry_the_prefix_pass_from_the_smallest_cascade_size(cascade_graphs):
    from pagoda.worker.cuda_graph import CudaGraphRunner

    graphs = CudaGraphRunner(None, [], 256, 4096, 16, torch.device("cpu"), _builder(TorchAttentionBackend()),
                             cascade=cascade_graphs)
    shared = torch.tensor([4], dtype=torch.int32)
    small, big = cascade.CASCADE_MIN_REQS - 1, cascade.CASCADE_MIN_REQS
    assert graphs.can_run(_Metadata(small)) and graphs.can_run(_Metadata(big))
    assert not graphs.can_run(_Metadata(small, shared))  # no prefix pass below CASCADE_MIN_REQS: eager
    assert graphs.can_run(_Metadata(big, shared)) == cascade_graphs
    assert graphs._has_prefix_pass(next(s for s in graphs.sizes if s >= big), 1) == cascade_graphs
    assert not graphs._has_prefix_pass(256, 2)  # verify graphs never
