"""The int4 layout (pack / unpack, the plane invariant) and the int4 decode GEMV vs. its torch reference:
groups of 32 / 128 / the whole input, odd row counts, bias, split-K, symmetric (no zeros) weights, and the
fused RMSNorm (+ residual) prologue and SiLU·mul epilogue. Small shapes: CPU runs go through Triton's interpreter."""

from __future__ import annotations

import json

import pytest
import torch

from pagoda.kernels import int4_layout, tuning
from pagoda.kernels.int4_gemv import int4_gemv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def random_int4(n: int, k: int, group: int, dtype, seed: int = 0, zeros: bool = True, device: str = DEVICE):
    """(qweight, scales, zeros) of a random [n, k] weight in the int4 layout, groups of `group` inputs."""
    gen = torch.Generator().manual_seed(seed)
    qweight = int4_layout.pack(torch.randint(0, 16, (n, k), generator=gen))
    scales = (torch.rand(n, k // group, generator=gen) * 0.02 + 0.005).to(dtype)
    z = torch.randint(0, 16, (n, k // group), generator=gen).to(torch.uint8) if zeros else None
    return qweight.to(device), scales.to(device), None if z is None else z.to(device)


def randn(*shape, dtype, seed=0, device=DEVICE):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


def test_layout_round_trip_and_planes():
    gen = torch.Generator().manual_seed(1)
    values = torch.randint(0, 16, (3, 256), generator=gen)
    packed = int4_layout.pack(values)
    assert packed.shape == (3, 32) and packed.dtype == torch.int32 and bool((packed < 0).any())  # bit 31 used
    assert torch.equal(int4_layout.unpack(packed), values)
    for n, c, i, p in [(0, 0, 0, 0), (2, 1, 7, 15), (1, 0, 3, 9)]:  # nibble i of int32 16c + p is input 128c + 16i + p
        assert (int(packed[n, 16 * c + p]) >> (4 * i)) & 15 == values[n, 128 * c + 16 * i + p]
    assert int4_layout.supports(4096, 128) and int4_layout.supports(256, 32) and int4_layout.supports(384, 384)
    assert not int4_layout.supports(200, 8) and not int4_layout.supports(384, 48) and not int4_layout.supports(96, 32)


@pytest.mark.parametrize("m,n,k,group,split_k", [
    (1, 40, 256, 32, 1),  # small groups: 4 per chunk
    (3, 37, 384, 128, 3),  # odd M and N, split-K over 3 ranges, one group per chunk
    (2, 24, 512, 512, 2),  # one group over the whole input (group_size -1)
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_gemv_matches_reference(m, n, k, group, split_k, dtype):
    qweight, scales, zeros = random_int4(n, k, group, dtype, seed=2)
    x = randn(m, k, dtype=dtype, seed=3)
    bias = randn(n, dtype=dtype, seed=4) if split_k > 1 else None
    launch = tuning.Int4GemvLaunch(block_n=8, block_k=128, split_k=split_k, num_warps=2, num_stages=1)
    out = int4_gemv(x, qweight, scales, zeros, bias, launch=launch)
    assert out.shape == (m, n) and out.dtype == dtype
    ref = int4_layout.int4_linear_ref(x, qweight, scales, zeros, group, bias)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_int4_gemv_symmetric_tuned_launch_and_strided_rows():
    """zeros None (every zero 8), the default launch (split-K on a long K, wide tiles), x a strided view."""
    qweight, scales, _ = random_int4(16, 4096, 64, torch.float32, seed=5)
    wide = randn(2, 5000, dtype=torch.float32, seed=6)
    x = wide[:, :4096]
    assert tuning.int4_gemv_launch(2, 16, 4096).split_k > 1
    out = int4_gemv(x, qweight, scales, None)
    torch.testing.assert_close(out, int4_layout.int4_linear_ref(x, qweight, scales, None, 64), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_bias", [False, True])
def test_int4_gemv_silu_and_mul(with_bias):
    dtype = torch.float16
    qweight, scales, zeros = random_int4(2 * 20, 256, 32, dtype, seed=7)
    x = randn(1, 256, dtype=dtype, seed=8)
    bias = randn(40, dtype=dtype, seed=9) if with_bias else None
    launch = tuning.Int4GemvLaunch(block_n=8, block_k=256, split_k=4, num_warps=2, num_stages=1)  # split ignored
    out = int4_gemv(x, qweight, scales, zeros, bias, launch=launch, silu_and_mul=True)
    assert out.shape == (1, 20)
    ref = int4_layout.int4_linear_ref(x, qweight, scales, zeros, 32, bias, silu_and_mul=True)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="even"):
        int4_gemv(x, qweight[:39], scales[:39], zeros[:39], silu_and_mul=True)


@pytest.mark.parametrize("with_residual,gated,m", [(False, False, 1), (True, False, 3), (True, True, 1)])
def test_int4_gemv_with_rms_norm_prologue(with_residual, gated, m):
    """RMSNorm (+ residual add) fused in front of the product; the new residual (written by column block 0
    only) must be exact."""
    dtype = torch.float16
    qweight, scales, zeros = random_int4(2 * 24 if gated else 37, 256, 128, dtype, seed=10)
    x = randn(m, 256, dtype=dtype, seed=11) * 2
    g = randn(256, dtype=dtype, seed=12)
    residual = randn(m, 256, dtype=dtype, seed=13) if with_residual else None
    residual_out = torch.empty_like(x) if with_residual else None
    launch = tuning.Int4GemvLaunch(block_n=8, block_k=128, split_k=2, num_warps=2, num_stages=1)
    out = int4_gemv(x, qweight, scales, zeros, None, launch=launch, silu_and_mul=gated, norm_weight=g, eps=1e-5,
                    residual=residual, residual_out=residual_out)
    ref = int4_layout.int4_linear_ref(x, qweight, scales, zeros, 128, None, silu_and_mul=gated, norm_weight=g,
                                      eps=1e-5, residual=residual)
    if with_residual:
        ref, ref_res = ref
        torch.testing.assert_close(residual_out, ref_res, atol=0, rtol=0)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


def test_int4_gemv_rejects_bad_shapes():
    qweight, scales, zeros = random_int4(8, 256, 32, torch.float32)
    with pytest.raises(ValueError, match="do not fit"):
        int4_gemv(torch.zeros(1, 128, device=DEVICE), qweight, scales, zeros)
    with pytest.raises(ValueError, match="at most"):
        int4_gemv(torch.zeros(tuning.GEMV_MAX_M + 1, 256, device=DEVICE), qweight, scales, zeros)
    with pytest.raises(ValueError, match="uint8"):
        int4_gemv(torch.zeros(1, 256, device=DEVICE), qweight, scales, zeros.to(torch.int32))
    with pytest.raises(ValueError, match="block_k"):
        int4_gemv(torch.zeros(1, 256, device=DEVICE), qweight, scales, zeros,
                  launch=tuning.Int4GemvLaunch(8, 64, 1, 2, 1))


def test_int4_gemv_launch_table_overrides_heuristic_per_form(tmp_path, monkeypatch):
    """A sweep's JSON table (PAGODA_INT4_GEMV_TABLE) sets the launch of exactly its (form, m, n, k) keys; the
    GEMV asks for the key of the form it runs; a malformed row is refused naming the row."""
    rows = [{"form": "gated", "m": 1, "n": 20, "k": 256, "block_n": 16, "block_k": 256, "split_k": 1,
             "num_warps": 4, "num_stages": 2, "us": 3.5}]
    path = tmp_path / "table.json"
    path.write_text(json.dumps(rows))
    monkeypatch.setenv("PAGODA_INT4_GEMV_TABLE", str(path))
    tuning._int4_gemv_table.cache_clear()
    try:
        assert tuning.int4_gemv_launch(1, 20, 256, "gated") == tuning.Int4GemvLaunch(16, 256, 1, 4, 2)
        assert tuning.int4_gemv_launch(1, 20, 256, "plain") != tuning.Int4GemvLaunch(16, 256, 1, 4, 2)
        asked = []
        real = tuning.int4_gemv_launch
        monkeypatch.setattr(tuning, "int4_gemv_launch", lambda *a: asked.append(a) or real(*a))
        qweight, scales, zeros = random_int4(2 * 20, 256, 32, torch.float32, seed=7)
        x = randn(1, 256, dtype=torch.float32, seed=8)
        out = int4_gemv(x, qweight, scales, zeros, silu_and_mul=True)
        gate, up = int4_layout.int4_linear_ref(x, qweight, scales, zeros, 32).chunk(2, dim=-1)
        torch.testing.assert_close(out, torch.nn.functional.silu(gate) * up, atol=1e-4, rtol=1e-4)
        g = torch.ones(256, device=DEVICE)
        int4_gemv(x, qweight, scales, zeros, norm_weight=g)
        assert asked == [(1, 20, 256, "gated"), (1, 40, 256, "norm")]
    finally:
        tuning._int4_gemv_table.cache_clear()
    path.write_text(json.dumps([dict(rows[0], form="fused")]))
    with pytest.raises(ValueError, match="bad int4 GEMV table row.*fused.*form must be one of"):
        tuning.load_int4_gemv_table(str(path))
