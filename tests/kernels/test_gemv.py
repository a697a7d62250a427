"""The decode GEMV kernel vs. its torch reference: row counts 1..4, split-K and not, bias, ragged N/K."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import tuning
from pagoda.kernels.gemv import gemv, gemv_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def randn(*shape, dtype, device, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("n,k", [(40, 96), (37, 200)])
@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_matches_reference(m, n, k, split_k, dtype, device):
    x = randn(m, k, dtype=dtype, device=device, seed=1)
    w = randn(n, k, dtype=dtype, device=device, seed=2)
    bias = randn(n, dtype=dtype, device=device, seed=3) if split_k == 3 else None
    launch = tuning.GemvLaunch(block_n=8, block_k=32, split_k=split_k, num_warps=2, num_stages=1)
    out = gemv(x, w, bias, launch=launch)
    assert out.shape == (m, n) and out.dtype == dtype
    torch.testing.assert_close(out, gemv_ref(x, w, bias), atol=TOL[dtype], rtol=TOL[dtype])


def test_gemv_tuned_launch_and_strided_rows(device):
    """The default launch (split-K on a long K), x a row-strided view (a slice of a wider buffer)."""
    wide = randn(2, 3000, dtype=torch.float32, device=device, seed=4)
    x = wide[:, :2048]
    w = randn(24, 2048, dtype=torch.float32, device=device, seed=5)
    assert tuning.gemv_launch(2, 24, 2048).split_k > 1
    torch.testing.assert_close(gemv(x, w), gemv_ref(x, w), atol=1e-4, rtol=1e-4)


def test_gemv_rejects_bad_shapes(device):
    w = torch.zeros(8, 16, device=device)
    with pytest.raises(ValueError, match="weight"):
        gemv(torch.zeros(1, 15, device=device), w)
    with pytest.raises(ValueError, match="at most"):
        gemv(torch.zeros(tuning.GEMV_MAX_M + 1, 16, device=device), w)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_silu_and_mul(with_bias, dtype, device):
    """The fused MLP activation: weight rows [gate | up], output silu(gate) * up from the fp32 sums."""
    x = randn(1, 72, dtype=dtype, device=device, seed=6)
    w = randn(2 * 20, 72, dtype=dtype, device=device, seed=7)
    bias = randn(40, dtype=dtype, device=device, seed=8) if with_bias else None
    launch = tuning.GemvLaunch(block_n=8, block_k=32, split_k=4, num_warps=2, num_stages=1)  # split is ignored
    out = gemv(x, w, bias, launch=launch, silu_and_mul=True)
    assert out.shape == (1, 20)
    torch.testing.assert_close(out, gemv_ref(x, w, bias, silu_and_mul=True), atol=TOL[dtype], rtol=TOL[dtype])
    with pytest.raises(ValueError, match="even"):
        gemv(x, w[:39], silu_and_mul=True)


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_with_rms_norm_prologue(with_residual, gated, dtype, device):
    """RMSNorm (+ residual add) fused in front of the product: output and new residual match the reference;
    only program 0 of the N grid writes the residual, so it must be exact."""
    x = randn(1, 80, dtype=dtype, device=device, seed=9) * 2
    w = randn(2 * 24 if gated else 37, 80, dtype=dtype, device=device, seed=10)
    g = randn(80, dtype=dtype, device=device, seed=11)
    residual = randn(1, 80, dtype=dtype, device=device, seed=12) if with_residual else None
    residual_out = torch.empty_like(x) if with_residual else None
    launch = tuning.GemvLaunch(block_n=8, block_k=32, split_k=2, num_warps=2, num_stages=1)
    out = gemv(x, w, None, launch=launch, silu_and_mul=gated, norm_weight=g, eps=1e-5,
               residual=residual, residual_out=residual_out)
    ref = gemv_ref(x, w, None, silu_and_mul=gated, norm_weight=g, eps=1e-5, residual=residual)
    if with_residual:
        ref, ref_res = ref
        torch.testing.assert_close(residual_out, ref_res, atol=0, rtol=0)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])
