"""A malformed FP8 checkpoint stops the load with a ValueError naming the checkpoint tensor: a missing scale
(of a plain layer, or of one piece of a fused one), a scale of the wrong shape, a float weight where the
config says FP8, an FP8 weight the skip list says is plain, an input scale missing under "static"."""

from __future__ import annotations

import pytest
import torch

from pagoda import LLM

LAYER0 = "model.layers.0."


def load(folder):
    return LLM(folder, dtype="float32", max_model_len=64)


@pytest.fixture(scope="module")
def fp8_llama(fp8_checkpoint):
    return fp8_checkpoint("LlamaForCausalLM", weight_scales="channel")


def test_missing_scale_of_a_plain_layer(fp8_llama, edited_checkpoint):
    folder = edited_checkpoint(fp8_llama, lambda s: s.pop(LAYER0 + "self_attn.o_proj.weight_scale"))
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\).*'model.layers.0.self_attn.o_proj.weight_scale'"):
        load(folder)


@pytest.mark.parametrize("piece, shard", [("self_attn.k_proj", "'k'"), ("mlp.up_proj", "1")])
def test_missing_scale_of_a_fused_piece(piece, shard, fp8_llama, edited_checkpoint):
    folder = edited_checkpoint(fp8_llama, lambda s: s.pop(LAYER0 + piece + ".weight_scale"))
    with pytest.raises(ValueError, match=rf"lacks '{LAYER0}{piece}.weight_scale' \(shard {shard} of the fused"):
        load(folder)


def test_missing_piece_of_an_unquantized_model(float_checkpoint, edited_checkpoint):
    folder = edited_checkpoint(float_checkpoint("LlamaForCausalLM"), lambda s: s.pop(LAYER0 + "self_attn.v_proj.weight"))
    with pytest.raises(ValueError, match=rf"lacks '{LAYER0}self_attn.v_proj.weight'"):
        load(folder)


@pytest.mark.parametrize("name, bad, needle", [
    ("self_attn.k_proj.weight_scale", torch.ones(31, 1), r"shape \(31, 1\) does not match the expected one value"),
    ("mlp.down_proj.weight_scale", torch.ones(1, 64), r"shape \(1, 64\) does not match"),
    ("self_attn.q_proj.weight", torch.ones(64, 32, dtype=torch.float8_e4m3fn), r"shape \(64, 32\) does not match"),
    ("self_attn.o_proj.weight", torch.ones(64, 64), "is torch.float32 but this layer holds torch.float8_e4m3fn"),
])
def test_wrong_tensors_are_named(name, bad, needle, fp8_llama, edited_checkpoint):
    folder = edited_checkpoint(fp8_llama, lambda s: s.__setitem__(LAYER0 + name, bad))
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{LAYER0}{name}': .*{needle}"):
        load(folder)


def test_fp8_weight_in_a_layer_the_skip_list_names(fp8_llama, edited_checkpoint):
    folder = edited_checkpoint(fp8_llama, edit_config=lambda c: c["quantization_config"].update(
        ignored_layers=[LAYER0 + "mlp.down_proj"]))
    with pytest.raises(ValueError, match=rf"'{LAYER0}mlp.down_proj.weight': the checkpoint tensor is "
                                         "torch.float8_e4m3fn but this layer is not quantized"):
        load(folder)


def test_static_scheme_without_input_scales(fp8_llama, edited_checkpoint):
    folder = edited_checkpoint(fp8_llama, edit_config=lambda c: c["quantization_config"].update(
        activation_scheme="static"))
    with pytest.raises(ValueError, match=r"lacks \d+ weight\(s\).*input_scale"):
        load(folder)


def test_negative_scale(fp8_llama, edited_checkpoint):
    def edit(state):
        state[LAYER0 + "mlp.down_proj.weight_scale"] = -state[LAYER0 + "mlp.down_proj.weight_scale"]

    with pytest.raises(ValueError, match=rf"'{LAYER0}mlp.down_proj.weight_scale': FP8 scales must be finite and >= 0"):
        load(edited_checkpoint(fp8_llama, edit))
