"""A pending RMSNorm handed to a linear layer: the fused GEMV and the materialized path agree.

On CUDA at batch 1 RMSNorm.forward_pending leaves the norm to the next projection's GEMV; CI has no GPU,
so these tests build the PendingRMSNorm directly on CPU tensors (Triton runs in its interpreter):
the layer materializes it (the RMSNorm kernel), and the GEMV with the same norm arguments must agree.
"""

from __future__ import annotations

import torch

from pagoda.kernels.gemv import gemv
from pagoda.kernels.rmsnorm import rmsnorm_ref
from pagoda.model_executor.layers.activation import SiluAndMul, silu_and_mul
from pagoda.model_executor.layers.layernorm import RMSNorm
from pagoda.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm


def _filled(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def test_pending_norm_materialized_by_linear_layer_and_fused_gemv_agree():
    torch.manual_seed(0)
    hidden = 64
    norm = RMSNorm(hidden, 1e-5)
    norm.weight.data.copy_(torch.rand(hidden) + 0.5)
    qkv = _filled(QKVParallelLinear(hidden, 16, 4, 2, bias=True), 1)
    x, residual = torch.randn(1, hidden), torch.randn(1, hidden)

    pending = PendingRMSNorm(x, norm.weight, norm.eps, residual, torch.empty_like(residual))
    out = qkv(pending)  # on CPU the unquantized method cannot run the GEMV: it materializes the norm
    ref_normed, ref_residual = rmsnorm_ref(x, norm.weight, norm.eps, residual)
    torch.testing.assert_close(pending.residual_out, ref_residual, atol=0, rtol=0)
    torch.testing.assert_close(out, qkv(ref_normed), atol=1e-5, rtol=1e-5)

    fused_residual = torch.empty_like(residual)
    fused = gemv(x, qkv.weight, qkv.bias, **{**pending.gemv_args(), "residual_out": fused_residual})
    torch.testing.assert_close(fused_residual, ref_residual, atol=0, rtol=0)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)


def test_pending_norm_into_gate_up_with_silu_and_no_residual():
    hidden, inter = 48, 40
    norm = RMSNorm(hidden, 1e-6)
    gate_up = _filled(MergedColumnParallelLinear(hidden, [inter, inter], bias=False), 2)
    x = torch.randn(1, hidden, generator=torch.Generator().manual_seed(3))
    pending = PendingRMSNorm(x, norm.weight, norm.eps, None, None)
    out = gate_up.forward_silu_and_mul(pending, SiluAndMul())
    expected = silu_and_mul(gate_up(norm(x)))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    fused = gemv(x, gate_up.weight, None, silu_and_mul=True, **pending.gemv_args())
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


def test_forward_pending_on_cpu_is_the_plain_norm():
    norm = RMSNorm(32, 1e-6)
    x, residual = torch.randn(1, 32), torch.randn(1, 32)
    normed, next_residual = norm.forward_pending(x, residual.clone())
    ref_normed, ref_residual = norm(x, residual.clone())
    assert isinstance(normed, torch.Tensor)
    torch.testing.assert_close(normed, ref_normed, atol=0, rtol=0)
    torch.testing.assert_close(next_residual, ref_residual, atol=0, rtol=0)
    first, first_residual = norm.forward_pending(x)
    assert first_residual is x
    torch.testing.assert_close(first, norm(x), atol=0, rtol=0)
