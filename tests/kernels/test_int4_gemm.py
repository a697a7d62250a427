"""The dequantizing int4 GEMM vs. its torch reference: odd row counts over several row blocks, ragged N, groups of
32 / 64 / 128 / the whole input, bias, symmetric (no zeros) weights, fp32 (IEEE dots) and fp16; the dequantized
tile is rounded to x's dtype as the AWQ / GPTQ references round it. CPU runs go through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import int4_layout, tuning
from pagoda.kernels.int4_gemm import int4_gemm

from test_int4_gemv import DEVICE, DTYPES, random_int4, randn

TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rounded_reference(x, qweight, scales, zeros, group, bias):
    """x @ Wᵀ with W dequantized in x's dtype (one rounding), the product in fp32: what the GEMM computes."""
    w = int4_layout.dequantize(qweight, scales, zeros, group, x.dtype).float()
    y = x.float() @ w.t()
    return (y if bias is None else y + bias.float()).to(x.dtype)


def assert_matches_references(out, x, qweight, scales, zeros, group, bias, dtype):
    """`out` equals the model-dtype rounded reference to the dtype's tolerance, and is close to the fp32-weight
    reference of the GEMV tests."""
    torch.testing.assert_close(out, rounded_reference(x, qweight, scales, zeros, group, bias),
                               atol=TOL[dtype], rtol=TOL[dtype])
    loose = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, int4_layout.int4_linear_ref(x, qweight, scales, zeros, group, bias),
                               atol=loose, rtol=loose)


@pytest.mark.parametrize("m,n,k,group,zeros,with_bias", [
    (5, 40, 256, 32, True, True),  # groups smaller than a chunk: scales per plane
    (37, 24, 384, 128, False, False),  # odd M over 3 row blocks, symmetric, one group per chunk
    (17, 20, 256, 256, True, True),  # one group over the whole input
    (16, 16, 256, 64, True, False),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_gemm_matches_reference(m, n, k, group, zeros, with_bias, dtype):
    qweight, scales, z = random_int4(n, k, group, dtype, seed=20, zeros=zeros)
    x = randn(m, k, dtype=dtype, seed=21)
    bias = randn(n, dtype=dtype, seed=22) if with_bias else None
    out = int4_gemm(x, qweight, scales, z, bias, launch=tuning.Int4GemmLaunch(16, 16, 2, 1))
    assert out.shape == (m, n) and out.dtype == dtype
    assert_matches_references(out, x, qweight, scales, z, group, bias, dtype)


def test_int4_gemm_tuned_launch_strided_rows_and_empty():
    qweight, scales, z = random_int4(24, 256, 128, torch.float32, seed=23)
    x = randn(40, 300, dtype=torch.float32, seed=24)[:, :256]
    torch.testing.assert_close(int4_gemm(x, qweight, scales, z), rounded_reference(x, qweight, scales, z, 128, None),
                               atol=1e-4, rtol=1e-4)
    assert int4_gemm(torch.zeros(0, 256, device=DEVICE), qweight, scales, z).shape == (0, 24)
    with pytest.raises(ValueError, match="do not fit"):
        int4_gemm(torch.zeros(2, 384, device=DEVICE), qweight, scales, z)
