"""The fused RMSNorm -> FP8 and SiLU·mul -> FP8 kernels against the unfused chains they replace (the RMSNorm or
SiLU·mul kernel, then the FP8 quantize kernel), bit for bit: values, scales and the written residual."""

import pytest
import torch

from pagoda.kernels.activation import silu_and_mul
from pagoda.kernels.fp8_fused_quant import MAX_N, fits, rmsnorm_fp8_quantize, silu_and_mul_fp8_quantize
from pagoda.kernels.fp8_quant import fp8_quantize
from pagoda.kernels.rmsnorm import rmsnorm


def _rows(m, n, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, generator=g) * torch.logspace(-2, 1, m).unsqueeze(1)  # rows of different ranges
    if m > 2:
        x[1] = 0.0  # a zero row (with no residual: the floor scale)
    return x.to(dtype).to(device)


def _dtypes(device):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


def _same_fp8(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float8_e4m3fn and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("m,n", [(1, 64), (5, 96), (3, 4096)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rmsnorm_fp8_quantize_equals_rmsnorm_then_quantize(device, m, n, with_residual):
    for dtype in _dtypes(device):
        x = _rows(m, n, dtype, device, seed=n + m)
        w = (torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.5).to(dtype).to(device)
        res = _rows(m, n, dtype, device, seed=7) if with_residual else None
        res_before = res.clone() if with_residual else None
        res_out = torch.empty_like(x) if with_residual else None
        q, scale = rmsnorm_fp8_quantize(x, w, 1e-5, res, res_out)
        if with_residual:
            work = res.clone()
            normed, summed = rmsnorm(x, w, 1e-5, work)
            assert torch.equal(res_out, summed) and torch.equal(res, res_before)  # the residual is not modified
        else:
            normed = rmsnorm(x, w, 1e-5)
        q_ref, scale_ref = fp8_quantize(normed)
        assert scale.shape == (m, 1) and torch.equal(scale, scale_ref), dtype
        assert _same_fp8(q, q_ref), dtype


@pytest.mark.parametrize("m,inter", [(1, 64), (4, 200), (2, 4096)])
def test_silu_and_mul_fp8_quantize_equals_silu_and_mul_then_quantize(device, m, inter):
    for dtype in _dtypes(device):
        x = _rows(m, 2 * inter, dtype, device, seed=inter)
        q, scale = silu_and_mul_fp8_quantize(x)
        q_ref, scale_ref = fp8_quantize(silu_and_mul(x))
        assert torch.equal(scale, scale_ref), dtype
        assert _same_fp8(q, q_ref), dtype


def test_strided_rows_empty_and_limits(device):
    wide = _rows(3, 256, torch.float32, device, seed=3)
    x = wide[:, :64]  # row stride 256
    w = torch.ones(64, device=device)
    q, scale = rmsnorm_fp8_quantize(x, w, 1e-6)
    q_ref, scale_ref = fp8_quantize(rmsnorm(x.contiguous(), w, 1e-6))
    assert torch.equal(scale, scale_ref) and _same_fp8(q, q_ref)
    q2, s2 = silu_and_mul_fp8_quantize(wide[:, :128])
    q2_ref, s2_ref = fp8_quantize(silu_and_mul(wide[:, :128].contiguous()))
    assert torch.equal(s2, s2_ref) and _same_fp8(q2, q2_ref)
    q0, s0 = silu_and_mul_fp8_quantize(torch.empty(0, 32, device=device))
    assert q0.shape == (0, 16) and s0.shape == (0, 1)
    assert fits(MAX_N) and not fits(MAX_N + 1) and not fits(0)
    with pytest.raises(ValueError, match="at most"):
        rmsnorm_fp8_quantize(torch.zeros(1, MAX_N + 128, device=device), torch.ones(MAX_N + 128, device=device), 1e-6)
    with pytest.raises(ValueError, match="must be even"):
        silu_and_mul_fp8_quantize(torch.zeros(1, 33, device=device))
    with pytest.raises(ValueError, match="residual needs a residual_out"):
        rmsnorm_fp8_quantize(x.contiguous(), w, 1e-6, residual=torch.zeros(3, 64, device=device))
