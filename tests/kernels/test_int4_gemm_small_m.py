"""The operand-swapped small-batch int4 GEMM vs. its torch reference: 2-16 rows, ragged N, groups of 32 / 128 / 256 /
the whole input, bias, symmetric weights, split-K over 2 and 3 ranges (the last one partial), fp32 (IEEE dots) and
fp16; the dequantized weight is rounded to x's dtype as int4_gemm.py rounds it. CPU runs go through Triton's
interpreter."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import tuning
from pagoda.kernels.int4_gemm_small_m import int4_gemm_small_m

from test_int4_gemm import assert_matches_references, rounded_reference
from test_int4_gemv import DEVICE, DTYPES, random_int4, randn


@pytest.mark.parametrize("m,n,k,group,zeros,with_bias,launch", [
    (3, 40, 256, 32, True, True, tuning.Int4SmallMLaunch(16, 256, 1, 2, 1)),  # groups of a quarter chunk, 3 row blocks
    (5, 24, 384, 128, False, False, tuning.Int4SmallMLaunch(16, 128, 3, 2, 1)),  # symmetric, split over 3 ranges
    (16, 20, 512, 256, True, True, tuning.Int4SmallMLaunch(16, 256, 2, 2, 2)),  # a group over two chunks, split 2
    (2, 16, 384, 384, True, False, tuning.Int4SmallMLaunch(16, 256, 1, 2, 1)),  # one group; the 2nd iteration half out
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_gemm_small_m_matches_reference(m, n, k, group, zeros, with_bias, launch, dtype):
    qweight, scales, z = random_int4(n, k, group, dtype, seed=30, zeros=zeros)
    x = randn(m, k, dtype=dtype, seed=31)
    bias = randn(n, dtype=dtype, seed=32) if with_bias else None
    out = int4_gemm_small_m(x, qweight, scales, z, bias, launch=launch)
    assert out.shape == (m, n) and out.dtype == dtype
    assert_matches_references(out, x, qweight, scales, z, group, bias, dtype)


def test_int4_gemm_small_m_default_launch_strided_rows_and_limits():
    qweight, scales, z = random_int4(24, 1024, 128, torch.float32, seed=33)
    x = randn(4, 1100, dtype=torch.float32, seed=34)[:, :1024]
    launch = tuning.int4_gemm_small_m_launch(4, 24, 1024)
    assert launch.split_k > 1  # one program's rows: K is split
    torch.testing.assert_close(int4_gemm_small_m(x, qweight, scales, z),
                               rounded_reference(x, qweight, scales, z, 128, None), atol=1e-4, rtol=1e-4)
    assert int4_gemm_small_m(torch.zeros(0, 1024, device=DEVICE), qweight, scales, z).shape == (0, 24)
    with pytest.raises(ValueError, match="at most 16 rows"):
        int4_gemm_small_m(torch.zeros(tuning.INT4_SMALL_M_MAX + 1, 1024, device=DEVICE), qweight, scales, z)
    with pytest.raises(ValueError, match="power of two multiple of 128"):
        int4_gemm_small_m(x, qweight, scales, z, launch=tuning.Int4SmallMLaunch(16, 192, 1, 2, 1))
