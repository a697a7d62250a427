"""The FP8 activation-quantization kernel against the torch math of the FP8 linear layers (bit for bit)."""

import pytest
import torch

from pagoda.kernels.fp8_quant import fp8_quantize, fp8_quantize_ref
from pagoda.model_executor.layers.quantization import fp8_utils


def _activations(m, k, dtype, device):
    g = torch.Generator().manual_seed(m * 1000 + k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 2, m).unsqueeze(1)  # rows of very different ranges
    x[0] = 0.0  # a zero row: the floor scale, zeros out
    if m > 2:
        x[1, : k // 2] *= 1e-4  # values far below the row's amax: FP8 subnormals
    return x.to(dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,k", [(1, 64), (5, 300), (7, 4096 + 96)])  # K below, between and past one block
def test_dynamic_per_token_equals_the_layers_math(device, dtype, m, k):
    x = _activations(m, k, dtype, device)
    q, scale = fp8_quantize(x)
    q_ref, scale_ref = fp8_utils.quantize_activation(x, None)
    assert scale.shape == (m, 1) and scale.dtype == torch.float32
    assert torch.equal(scale, scale_ref)
    assert q.dtype == torch.float8_e4m3fn and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    q2, s2 = fp8_quantize_ref(x)
    assert torch.equal(s2, scale_ref) and torch.equal(q2.view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_scale_and_clamping(device, dtype):
    x = _activations(6, 520, dtype, device)
    static = torch.tensor([0.05], dtype=torch.float32, device=device)  # small: most values clamp to ±448
    q, scale = fp8_quantize(x, static)
    q_ref, _ = fp8_utils.quantize_activation(x, static)
    assert scale is static
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert q.float().abs().max().item() == 448.0


def test_strided_rows_and_empty(device):
    base = _activations(4, 256, torch.float32, device)
    x = base[:, :128]  # row stride 256, unit stride in K
    q, scale = fp8_quantize(x)
    q_ref, s_ref = fp8_utils.quantize_activation(x.contiguous(), None)
    assert torch.equal(scale, s_ref) and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    q0, s0 = fp8_quantize(torch.empty(0, 64, device=device))
    assert q0.shape == (0, 64) and s0.shape == (0, 1)
    with pytest.raises(ValueError, match="static scale is one value"):
        fp8_quantize(x, torch.ones(2, device=device))
