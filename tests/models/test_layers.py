"""Layer pieces on their own: fused linear loading, rotary layouts, norms, activations."""

from __future__ import annotations

import pytest
import torch

from pagoda.model_executor.layers.activation import get_act_fn, silu_and_mul
from pagoda.model_executor.layers.layernorm import RMSNorm
from pagoda.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from pagoda.model_executor.layers.rotary import RotaryEmbedding


def test_qkv_loads_separate_and_fused_weights():
    layer = QKVParallelLinear(hidden_size=8, head_size=2, total_num_heads=4, total_num_kv_heads=2, bias=True)
    q, k, v = torch.randn(8, 8), torch.randn(4, 8), torch.randn(4, 8)
    for shard, w in zip("qkv", (q, k, v)):
        layer.weight_loader(layer.weight, w, shard)
    assert torch.equal(layer.weight, torch.cat([q, k, v]))
    fused = QKVParallelLinear(8, 2, 4, 2, bias=False)
    fused.weight_loader(fused.weight, torch.cat([q, k, v]))
    assert torch.equal(fused.weight, layer.weight)
    with pytest.raises(ValueError, match="shard_id"):
        layer.weight_loader(layer.weight, q, "x")


def test_merged_column_loads_gate_up():
    layer = MergedColumnParallelLinear(4, [6, 6], bias=False)
    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    layer.weight_loader(layer.weight, up, 1)
    layer.weight_loader(layer.weight, gate, 0)
    assert torch.equal(layer.weight, torch.cat([gate, up]))


def test_rotary_gptj_is_neox_on_permuted_dims():
    torch.manual_seed(0)
    neox = RotaryEmbedding(8, 8, 32, 10000.0, is_neox_style=True)
    gptj = RotaryEmbedding(8, 8, 32, 10000.0, is_neox_style=False)
    pos = torch.tensor([0, 3, 17])
    q, k = torch.randn(3, 2 * 8), torch.randn(3, 8)
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved -> halves
    qn, kn = neox(pos, q.view(3, 2, 8)[..., perm].reshape(3, 16), k[:, perm])
    qg, kg = gptj(pos, q, k)
    torch.testing.assert_close(qg.view(3, 2, 8)[..., perm].reshape(3, 16), qn)
    torch.testing.assert_close(kg[:, perm], kn)
    q0, _ = neox(torch.zeros(3, dtype=torch.long), q, k)
    torch.testing.assert_close(q0, q)  # position 0 is the identity


def test_partial_rotary_leaves_tail_untouched():
    rope = RotaryEmbedding(8, 4, 16, 10000.0)
    q, k = torch.randn(2, 8), torch.randn(2, 8)
    qr, kr = rope(torch.tensor([5, 9]), q, k)
    assert torch.equal(qr[:, 4:], q[:, 4:]) and not torch.equal(qr[:, :4], q[:, :4])


def test_rope_rejects_unknown_scaling():
    with pytest.raises(ValueError, match="rope_scaling"):
        RotaryEmbedding(8, 8, 16, 10000.0, rope_params={"rope_type": "yarn"})


def test_rmsnorm_fused_residual():
    norm = RMSNorm(6, eps=1e-6)
    x, r = torch.randn(3, 6), torch.randn(3, 6)
    normed, residual = norm(x, r)
    torch.testing.assert_close(residual, x + r)
    torch.testing.assert_close(normed, norm(x + r))


def test_activations():
    x = torch.randn(4, 10)
    torch.testing.assert_close(silu_and_mul(x), torch.nn.functional.silu(x[:, :5]) * x[:, 5:])
    from transformers.activations import ACT2FN

    for name in ("gelu_new", "gelu", "relu", "gelu_pytorch_tanh"):
        torch.testing.assert_close(get_act_fn(name)(x), ACT2FN[name](x))
    with pytest.raises(ValueError, match="hidden_act"):
        get_act_fn("swiglu-9000")
