"""The loaders' seam for int4 formats (AWQ, GPTQ come later): a linear method may register parameters in
either layout ([in, out] with output_dim 1), packed several values per element (`packed_dim`,
`packed_factor`), or grouped along the input; fused pieces land at their packed offsets and misaligned
pieces are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pagoda.model_executor.layers.linear import LinearMethod, MergedColumnParallelLinear, RowParallelLinear, \
    set_weight_attrs

PACK = 8  # int4 values per int32


class PackedMethod(LinearMethod):
    """AWQ-like parameters: qweight int32 [in, out / 8] packed along out, scales [in / group, out]."""

    def __init__(self, pack_dim: str, group: int = 16):
        self.pack_dim, self.group = pack_dim, group

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        k, n = input_size_per_partition, sum(output_partition_sizes)
        shape = (k, n // PACK) if self.pack_dim == "out" else (k // PACK, n)
        qweight = nn.Parameter(torch.zeros(shape, dtype=torch.int32), requires_grad=False)
        set_weight_attrs(qweight, {"input_dim": 0, "output_dim": 1, "packed_dim": 1 if self.pack_dim == "out" else 0,
                                   "packed_factor": PACK})
        scales = nn.Parameter(torch.zeros(k // self.group, n), requires_grad=False)
        set_weight_attrs(scales, {"input_dim": 0, "output_dim": 1})
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("scales", scales)

    def apply(self, layer, x, bias):
        raise NotImplementedError


def test_fused_pieces_land_at_packed_offsets():
    layer = MergedColumnParallelLinear(64, [32, 48], bias=False, linear_method=PackedMethod("out"))
    assert layer.qweight.shape == (64, 10)
    gate = torch.arange(64 * 4, dtype=torch.int32).reshape(64, 4)
    up = -torch.arange(64 * 6, dtype=torch.int32).reshape(64, 6)
    layer.weight_loader(layer.qweight, gate, 0)
    layer.weight_loader(layer.qweight, up, 1)
    assert torch.equal(layer.qweight[:, :4], gate) and torch.equal(layer.qweight[:, 4:], up)
    scales = torch.rand(4, 48)
    layer.weight_loader(layer.scales, scales, 1)
    assert torch.equal(layer.scales[:, 32:], scales)
    with pytest.raises(ValueError, match=r"shape \(64, 5\) does not match the expected \(64, 6\)"):
        layer.weight_loader(layer.qweight, up[:, :5], 1)
    layer.weight_loader(layer.qweight, torch.cat([gate, up], dim=1))  # a fused checkpoint tensor
    assert layer.qweight.loaded_shards == {0, 1}


def test_misaligned_piece_is_refused():
    with pytest.raises(ValueError, match="not multiples of its packing factor 8"):
        layer = MergedColumnParallelLinear(64, [36, 44], bias=False, linear_method=PackedMethod("out"))
        layer.weight_loader(layer.qweight, torch.zeros(64, 4, dtype=torch.int32), 0)


def test_row_parallel_packed_along_the_input_and_grouped_scales():
    layer = RowParallelLinear(128, 32, bias=False, linear_method=PackedMethod("in"))
    qweight = torch.randint(-2**31, 2**31 - 1, (16, 32), dtype=torch.int32)
    layer.qweight.weight_loader(layer.qweight, qweight)
    assert torch.equal(layer.qweight, qweight)
    scales = torch.rand(8, 32)
    layer.scales.weight_loader(layer.scales, scales)
    assert torch.equal(layer.scales, scales)


def test_packed_integers_and_floats_are_never_cast_into_each_other():
    import torch

    from pagoda.model_executor.layers.weight_loading import default_weight_loader

    packed = torch.nn.Parameter(torch.zeros(4, 2, dtype=torch.int32), requires_grad=False)
    with pytest.raises(ValueError, match="torch.float16 but this parameter holds torch.int32"):
        default_weight_loader(packed, torch.zeros(4, 2, dtype=torch.float16))
    scales = torch.nn.Parameter(torch.zeros(4, 2, dtype=torch.float16), requires_grad=False)
    with pytest.raises(ValueError, match="torch.int32 but this parameter holds torch.float16"):
        default_weight_loader(scales, torch.zeros(4, 2, dtype=torch.int32))
    default_weight_loader(packed, torch.ones(4, 2, dtype=torch.int32))
    assert int(packed.sum()) == 8
