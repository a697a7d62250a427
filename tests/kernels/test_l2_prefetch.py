"""L2 prefetch: the chunk arithmetic in Triton's interpreter, the no-op contract off the GPU, and that
the prefetching attention layer computes what it computed without it.

The prefetch instruction itself is PTX inline assembly, which the interpreter cannot run; on the GPU
it is exercised by scripts/gpu_check.py (outputs equal with PAGODA_L2_PREFETCH_MAX_ROWS 0 and 1) and
timed by tests/kernels/bench_prefetch.py.
"""

import pytest
import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.l2_prefetch import PREFETCH_CHUNK, PREFETCH_LANES, prefetch_chunks, prefetch_l2
from pagoda.model_executor.layers import weight_prefetch


@triton.jit
def _chunks_probe(start_ptr, size_ptr, num_bytes, CHUNK: tl.constexpr, LANES: tl.constexpr):
    pid = tl.program_id(0)
    start, size = prefetch_chunks(pid, num_bytes, CHUNK, LANES)
    offs = pid * LANES + tl.arange(0, LANES)
    tl.store(start_ptr + offs, start)
    tl.store(size_ptr + offs, size)


@pytest.mark.parametrize("num_bytes", [16, 4096, 4096 * 3 + 40, PREFETCH_CHUNK * PREFETCH_LANES + 17, 33554432])
def test_chunks_tile_the_bytes(num_bytes):
    chunk, lanes = 1024, 8
    programs = triton.cdiv(num_bytes, chunk * lanes)
    start = torch.full((programs * lanes,), -1, dtype=torch.int64)
    size = torch.full((programs * lanes,), -1, dtype=torch.int32)
    _chunks_probe[(programs,)](start, size, num_bytes, CHUNK=chunk, LANES=lanes)
    covered = torch.zeros(num_bytes, dtype=torch.int32)
    for s, n in zip(start.tolist(), size.tolist()):
        assert n % 16 == 0 and 0 <= n <= chunk
        covered[s : s + n] += 1
    assert covered.max() <= 1  # no byte twice
    assert int(covered.sum()) >= num_bytes - 16 * programs * lanes  # all but each run's last < 16 bytes
    whole = num_bytes // chunk * chunk
    assert whole == 0 or int(covered[:whole].min()) == 1  # every whole chunk


def test_prefetch_is_a_noop_off_the_gpu():
    t = torch.randn(64, 64)
    before = t.clone()
    prefetch_l2(t)
    assert torch.equal(t, before)


def test_prefetch_during_keeps_layer_outputs(monkeypatch):
    """The Llama attention block gives the same output with the prefetch enabled for its row count
    (on CPU the prefetch is skipped: the contract is that it never changes values)."""
    from pagoda.model_executor.layers.linear import RowParallelLinear

    layer = RowParallelLinear(32, 16, bias=False)
    monkeypatch.setattr(tuning, "L2_PREFETCH_MAX_ROWS", 4)
    assert not weight_prefetch.prefetch_applies(layer, 1)  # CPU parameters
    with weight_prefetch.prefetch_during(layer, num_rows=1):
        y = layer(torch.ones(1, 32))
    assert torch.equal(y, layer(torch.ones(1, 32)))


def test_prefetch_rows_rule(monkeypatch):
    class FakeParam:
        is_cuda = True

    class Fake(torch.nn.Module):
        def parameters(self, recurse=True):
            return iter([FakeParam()])

    monkeypatch.setattr(tuning, "L2_PREFETCH_MAX_ROWS", 2)
    assert weight_prefetch.prefetch_applies(Fake(), 1)
    assert weight_prefetch.prefetch_applies(Fake(), 2)
    assert not weight_prefetch.prefetch_applies(Fake(), 3)
    assert not weight_prefetch.prefetch_applies(Fake(), 0)
    monkeypatch.setattr(tuning, "L2_PREFETCH_MAX_ROWS", 0)
    assert not weight_prefetch.prefetch_applies(Fake(), 1)
