"""AWQ int4 math (awq_utils.py) against the format's description: AutoAWQ's packing order on a hand-made value,
pack / unpack round trips (incl. int32s with bit 31 set), dequantization with groups and zero points against
the independent reference (awq_reference.py) and tiny_quantized_models' packer, and AwqLinearMethod in real layers
(plain, fused qkv / gate_up pieces, row-parallel), in fp32 and fp16."""

from __future__ import annotations

import pytest
import torch

from awq_reference import dequantize as reference_dequantize
from awq_reference import unpack as reference_unpack
from pagoda.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagoda.model_executor.layers.quantization.awq import AwqConfig, AwqLinearMethod
from pagoda.model_executor.layers.quantization.awq_utils import (
    awq_linear_reference,
    dequantize,
    pack_int4,
    unpack_int4,
)
from pagoda.tiny_quantized_models import _awq_pack


def random_awq(k: int, n: int, group: int, gen: torch.Generator) -> dict:
    return {"qweight": pack_int4(torch.randint(0, 16, (k, n), generator=gen)),
            "qzeros": pack_int4(torch.randint(0, 16, (k // group, n), generator=gen)),
            "scales": (torch.rand(k // group, n, generator=gen) * 0.1 + 0.01).half()}


def test_autoawq_order_on_a_known_value():
    # nibble p of 0x76543210 holds p; AutoAWQ puts column order[p] = [0, 2, 4, 6, 1, 3, 5, 7][p] there
    packed = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_int4(packed).tolist() == [[0, 4, 1, 5, 2, 6, 3, 7]]
    assert pack_int4(torch.tensor([[0, 4, 1, 5, 2, 6, 3, 7]])).tolist() == [[0x76543210]]
    # bit 31 set: the int32 is negative, its top nibble (column 7) is 15
    top = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 15]])
    assert pack_int4(top).item() == -(2**31) + 7 * 2**28 and unpack_int4(pack_int4(top)).tolist() == top.tolist()


def test_round_trip_and_agreement_with_the_other_packers():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 16, (24, 64), generator=gen)
    packed = pack_int4(values)
    assert packed.dtype == torch.int32 and packed.shape == (24, 8) and bool((packed < 0).any())
    assert torch.equal(unpack_int4(packed), values.to(torch.int32))
    assert torch.equal(_awq_pack(values), packed)  # tiny_quantized_models' checkpoint writer
    assert torch.equal(reference_unpack(packed), values)  # the test reference
    bits = torch.randint(-2**31, 2**31 - 1, (5, 3), dtype=torch.int32, generator=gen)
    assert torch.equal(pack_int4(unpack_int4(bits)), bits)


def test_pack_refuses_bad_values():
    with pytest.raises(ValueError, match="not a multiple of 8"):
        pack_int4(torch.zeros(2, 12, dtype=torch.int32))
    with pytest.raises(ValueError, match="values must be in 0..15"):
        pack_int4(torch.full((1, 8), 16))


@pytest.mark.parametrize("group", [32, 64, 128])
def test_dequantize_matches_the_reference(group):
    t = random_awq(128, 48, group, torch.Generator().manual_seed(group))
    w = dequantize(t["qweight"], t["qzeros"], t["scales"], group, torch.float32)
    assert w.shape == (128, 48)
    assert torch.equal(w, reference_dequantize(t["qweight"], t["qzeros"], t["scales"], group))
    q, z = unpack_int4(t["qweight"]), unpack_int4(t["qzeros"])
    i, j = 100, 13  # one element by the formula: group i // G of column j
    assert w[i, j] == (q[i, j] - z[i // group, j]) * t["scales"][i // group, j].float()


def test_reference_linear_in_fp16_and_with_bias():
    t = random_awq(64, 32, 32, torch.Generator().manual_seed(1))
    x = torch.randn(3, 5, 64)
    bias = torch.randn(32)
    expected = x @ reference_dequantize(t["qweight"], t["qzeros"], t["scales"], 32) + bias
    out = awq_linear_reference(x, t["qweight"], t["qzeros"], t["scales"], 32, bias)
    assert out.shape == (3, 5, 32) and torch.allclose(out, expected, atol=1e-5)
    half = awq_linear_reference(x.half(), t["qweight"], t["qzeros"], t["scales"].half(), 32, bias.half())
    assert half.dtype == torch.float16 and torch.allclose(half.float(), expected, atol=2e-2, rtol=1e-2)


def load_piece(layer, piece: dict, shard_id) -> None:
    for name, tensor in piece.items():
        param = getattr(layer, name)
        param.weight_loader(param, tensor, shard_id)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_qkv_pieces_land_at_their_packed_offsets(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        layer = QKVParallelLinear(64, 16, 4, 2, bias=False, quant_config=AwqConfig(32), prefix="qkv_proj")
    finally:
        torch.set_default_dtype(old)
    assert isinstance(layer.linear_method, AwqLinearMethod)
    assert layer.qweight.shape == (64, 16) and layer.qzeros.shape == (2, 16) and layer.scales.shape == (2, 128)
    assert layer.scales.dtype == dtype
    gen = torch.Generator().manual_seed(2)
    pieces = {"q": random_awq(64, 64, 32, gen), "k": random_awq(64, 32, 32, gen), "v": random_awq(64, 32, 32, gen)}
    for shard_id in ("v", "q", "k"):  # any order
        load_piece(layer, pieces[shard_id], shard_id)
    assert layer.qweight.loaded_shards == {"q", "k", "v"}
    x = torch.randn(4, 64)
    expected = torch.cat([x @ reference_dequantize(p["qweight"], p["qzeros"], p["scales"], 32) for p in pieces.values()],
                         dim=1)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), expected, atol=1e-5 if dtype == torch.float32 else 3e-2, rtol=1e-2)


def test_gate_up_fused_checkpoint_tensor_and_row_parallel():
    gen = torch.Generator().manual_seed(3)
    merged = MergedColumnParallelLinear(64, [32, 32], bias=False, quant_config=AwqConfig(64), prefix="gate_up_proj")
    gate, up = random_awq(64, 32, 64, gen), random_awq(64, 32, 64, gen)
    for name in ("qweight", "qzeros", "scales"):  # one tensor of the whole fused layer, split by the loader
        param = getattr(merged, name)
        param.weight_loader(param, torch.cat([gate[name], up[name]], dim=1))
    x = torch.randn(2, 64)
    expected = torch.cat([x @ reference_dequantize(p["qweight"], p["qzeros"], p["scales"], 64) for p in (gate, up)], 1)
    assert torch.allclose(merged(x), expected, atol=1e-5)
    down = RowParallelLinear(128, 64, bias=True, quant_config=AwqConfig(32), prefix="down_proj")
    t = random_awq(128, 64, 32, gen)
    bias = torch.randn(64)
    for name, tensor in {**t, "bias": bias}.items():
        getattr(down, name).weight_loader(getattr(down, name), tensor)
    x = torch.randn(3, 128)
    assert torch.allclose(down(x), x @ reference_dequantize(t["qweight"], t["qzeros"], t["scales"], 32) + bias,
                          atol=1e-5)


def test_group_size_minus_one_is_the_whole_input():
    layer = RowParallelLinear(128, 16, bias=False, quant_config=AwqConfig(-1), prefix="o_proj")
    assert layer.qzeros.shape == (1, 2) and layer.scales.shape == (1, 16) and layer.awq_group_size == 128


@pytest.mark.parametrize("make, needle", [
    (lambda c: RowParallelLinear(96, 16, bias=False, quant_config=c, prefix="model.layers.0.mlp.down_proj"),
     r"model.layers.0.mlp.down_proj: its input size 96 \(on this rank\) is not a multiple of the AWQ group size 64"),
    (lambda c: MergedColumnParallelLinear(64, [36, 28], bias=False, quant_config=c, prefix="model.layers.0.mlp.gate_up_proj"),
     r"model.layers.0.mlp.gate_up_proj: output sizes \[36, 28\] .* not multiples of 8"),
])
def test_shapes_the_format_cannot_hold(make, needle):
    with pytest.raises(ValueError, match=needle):
        make(AwqConfig(64))
