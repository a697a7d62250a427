"""The int4 dequant kernel (prefill path: W dequantized to the activation dtype, then cuBLAS) vs. the torch
reference int4_layout.dequantize: bitwise equal in fp32 and fp16, for groups of 16 / 32 / 128 / the whole input,
ragged N and K (partial program tiles), symmetric weights; and the dispatch threshold. CPU runs go through
Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import int4_layout, tuning
from pagoda.kernels.int4_dequant import int4_dequantize

from test_int4_gemv import DEVICE, DTYPES, random_int4


@pytest.mark.parametrize("n,k,group,zeros", [
    (40, 256, 32, True),  # groups smaller than a chunk
    (37, 640, 128, False),  # ragged N and K (5 chunks over 2 programs of 4), symmetric
    (16, 384, 384, True),  # one group over the whole input
    (8, 128, 16, True),  # the smallest group
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_dequantize_matches_reference(n, k, group, zeros, dtype):
    qweight, scales, z = random_int4(n, k, group, dtype, seed=30, zeros=zeros)
    out = torch.full((n, k), float("nan"), dtype=dtype, device=DEVICE)
    assert int4_dequantize(qweight, scales, z, out) is out
    ref = int4_layout.dequantize(qweight, scales.float(), z, group, torch.float32).to(dtype)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_int4_dequantize_rejects_bad_outputs():
    qweight, scales, z = random_int4(8, 256, 32, torch.float32)
    with pytest.raises(ValueError, match="contiguous float"):
        int4_dequantize(qweight, scales, z, torch.empty(8, 128, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous float"):
        int4_dequantize(qweight, scales, z, torch.empty(256, 8, device=DEVICE).t())


def test_dequant_dispatch_threshold():
    assert not tuning.int4_dequant_applies(tuning.INT4_DEQUANT_MIN_M - 1)
    assert tuning.int4_dequant_applies(tuning.INT4_DEQUANT_MIN_M) == (tuning.INT4_DEQUANT_MIN_M > 0)
