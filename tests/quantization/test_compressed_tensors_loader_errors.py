"""A malformed compressed-tensors checkpoint stops the load with a ValueError naming the checkpoint tensor: a
weight_packed / weight_scale / weight_zero_point of the wrong shape or dtype (plain layer or fused piece), a missing
weight_scale (plain, or one piece of a fused layer), a missing zero point of an asymmetric layer, an int8 or fp8
weight stored as float, a float weight where the config says quantized; a layer whose sizes do not fit the packing
or the group size is named before any weight is read. The packing helpers agree with the reference's."""

from __future__ import annotations

import pytest
import torch

from compressed_tensors_reference import ct_checkpoint, unpack
from pagoda import LLM
from pagoda.model_executor.layers.quantization.compressed_tensors_int8 import int8_linear, quantize_int8
from pagoda.model_executor.layers.quantization.compressed_tensors_wna16 import unpack_input_packed, unpack_output_packed
from pagoda.tiny_compressed_tensors import _pack

LAYER0 = "model.layers.0."


def load(folder):
    return LLM(folder, dtype="float32", max_model_len=64)


@pytest.fixture(scope="module")
def asym(tmp_path_factory, tok_dir):
    return ct_checkpoint(tmp_path_factory, tok_dir, "LlamaForCausalLM", scheme="W4A16", group_size=32, symmetric=False)


@pytest.fixture(scope="module")
def int8(tmp_path_factory, tok_dir):
    return ct_checkpoint(tmp_path_factory, tok_dir, "LlamaForCausalLM", scheme="W8A8", weight_strategy="channel",
                         activations="static")


# Llama tiny: hidden 64, intermediate 128, q 64 / k 32 / v 32 outputs; group 32
@pytest.mark.parametrize("name, shape, dtype, needle", [
    ("self_attn.o_proj.weight_packed", (64, 7), torch.int32, r"shape \(64, 7\) does not match the expected \(64, 8\)"),
    ("mlp.down_proj.weight_packed", (64, 8), torch.int32, r"shape \(64, 8\) does not match the expected \(64, 16\)"),
    ("self_attn.k_proj.weight_packed", (64, 8), torch.int32, r"shape \(64, 8\) does not match the expected \(32, 8\)"),
    ("mlp.down_proj.weight_scale", (64, 2), torch.bfloat16, r"shape \(64, 2\) does not match the expected \(64, 4\)"),
    ("self_attn.v_proj.weight_scale", (32,), torch.bfloat16, r"shape \(32,\) does not match the expected \(32, 2\)"),
    ("mlp.up_proj.weight_zero_point", (128, 2), torch.int32, r"shape \(128, 2\) does not match the expected \(16, 2\)"),
    ("self_attn.o_proj.weight_packed", (64, 8), torch.float32, "is torch.float32 but this parameter holds torch.int32"),
    ("self_attn.o_proj.weight_scale", (64, 2), torch.int32, "is torch.int32 but this parameter holds torch.float32"),
])
def test_wrong_tensors_are_named(name, shape, dtype, needle, asym, edited_checkpoint):
    folder = edited_checkpoint(asym, lambda s: s.__setitem__(LAYER0 + name, torch.zeros(shape, dtype=dtype)))
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{LAYER0}{name}': .*{needle}"):
        load(folder)


@pytest.mark.parametrize("suffix", ["weight_scale", "weight_zero_point"])
def test_missing_tensor_of_a_plain_layer(suffix, asym, edited_checkpoint):
    folder = edited_checkpoint(asym, lambda s: s.pop(LAYER0 + "self_attn.o_proj." + suffix))
    with pytest.raises(ValueError, match=rf"lacks 1 weight\(s\).*'{LAYER0}self_attn.o_proj.{suffix}'"):
        load(folder)


@pytest.mark.parametrize("piece, shard", [("self_attn.k_proj", "'k'"), ("mlp.up_proj", "1")])
def test_missing_scale_of_a_fused_piece(piece, shard, asym, edited_checkpoint):
    folder = edited_checkpoint(asym, lambda s: s.pop(LAYER0 + piece + ".weight_scale"))
    with pytest.raises(ValueError, match=rf"lacks '{LAYER0}{piece}.weight_scale' \(shard {shard} of the fused"):
        load(folder)


def test_float_weight_where_the_config_says_quantized(asym, edited_checkpoint):
    def edit(state):
        for suffix in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"):
            state.pop(LAYER0 + "mlp.down_proj." + suffix)
        state[LAYER0 + "mlp.down_proj.weight"] = torch.zeros(64, 128)

    with pytest.raises(ValueError, match=r"lacks 3 weight\(s\).*'model.layers.0.mlp.down_proj.weight_packed'"):
        load(edited_checkpoint(asym, edit))


@pytest.mark.parametrize("name, bad, needle", [
    ("mlp.down_proj.weight", torch.zeros(64, 128), "is torch.float32 but this parameter holds torch.int8"),
    ("self_attn.q_proj.weight", torch.zeros(64, 32, dtype=torch.int8), r"shape \(64, 32\) does not match"),
    ("self_attn.o_proj.input_scale", torch.ones(2), r"shape \(2,\): a per-tensor scale has one value"),
])
def test_int8_tensors_are_named(name, bad, needle, int8, edited_checkpoint):
    folder = edited_checkpoint(int8, lambda s: s.__setitem__(LAYER0 + name, bad))
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{LAYER0}{name}': .*{needle}"):
        load(folder)


def test_int8_zero_input_scale(int8, edited_checkpoint):
    folder = edited_checkpoint(int8, lambda s: s.__setitem__(LAYER0 + "mlp.down_proj.input_scale", torch.zeros(1)))
    with pytest.raises(ValueError, match=rf"'{LAYER0}mlp.down_proj.input_scale': int8 scales must be finite and > 0"):
        load(folder)


def test_sizes_that_do_not_fit_the_group_size(asym, edited_checkpoint):
    folder = edited_checkpoint(asym, edit_config=lambda c: c["quantization_config"]["config_groups"]["group_0"][
        "weights"].update(group_size=48))
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.qkv_proj: its input size 64 .* group size 48"):
        load(folder)


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_matches_the_reference(bits):
    values = torch.randint(0, 1 << bits, (16, 64), generator=torch.Generator().manual_seed(bits))
    packed = _pack(values, bits)
    assert torch.equal(unpack_input_packed(packed, bits).long(), values)
    assert torch.equal(unpack(packed, bits, 1), values)
    columns = _pack(values.t(), bits).t()  # values packed along dim 0 (zero points' layout)
    assert columns.shape == (16 // (32 // bits), 64)
    assert torch.equal(unpack_output_packed(columns, bits).long(), values)
    assert torch.equal(unpack(columns, bits, 0), values)


def test_int8_matmul_paths_agree():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 64, generator=gen), torch.randint(-128, 128, (24, 64), generator=gen).to(torch.int8)
    w_scale = torch.rand(24, 1, generator=gen) / 100
    q_x, x_scale = quantize_int8(x, None)
    assert q_x.dtype == torch.int8 and int(q_x.abs().amax(dim=1).min()) == 127
    out = int8_linear(q_x, x_scale, w, w_scale, None, torch.float32)
    ref = (q_x.double() * x_scale.double()) @ (w.double() * w_scale.double()).t()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    static = quantize_int8(x, torch.tensor([0.01]))[0]
    assert torch.equal(static, torch.round(x / 0.01).clamp(-128, 127).to(torch.int8))
