"""A malformed AWQ checkpoint stops the load with a ValueError naming the checkpoint tensor: a qweight, qzeros or
scales of the wrong shape (of a plain layer or of a fused piece, packed or grouped dim wrong), a missing qzeros
(plain, or one piece of a fused layer), a float weight where the config says AWQ, an AWQ layer the skip list
says is plain."""

from __future__ import annotations

import pytest
import torch

from awq_reference import awq_checkpoint
from pagoda import LLM

LAYER0 = "model.layers.0."


def load(folder):
    return LLM(folder, dtype="float32", max_model_len=64)


@pytest.fixture(scope="module")
def awq_llama(tmp_path_factory, tok_dir):
    return awq_checkpoint(tmp_path_factory, tok_dir, "LlamaForCausalLM", group_size=32)


# Llama tiny: hidden 64, intermediate 128, q 64 / k 32 / v 32 outputs; group 32
@pytest.mark.parametrize("name, shape, dtype, needle", [
    ("self_attn.o_proj.qweight", (64, 7), torch.int32, r"shape \(64, 7\) does not match the expected \(64, 8\)"),
    ("self_attn.o_proj.qweight", (32, 8), torch.int32, r"shape \(32, 8\) does not match the expected \(64, 8\)"),
    ("mlp.down_proj.qzeros", (2, 8), torch.int32, r"shape \(2, 8\) does not match the expected \(4, 8\)"),
    ("mlp.down_proj.scales", (4, 8), torch.float16, r"shape \(4, 8\) does not match the expected \(4, 64\)"),
    ("self_attn.k_proj.qweight", (64, 8), torch.int32, r"shape \(64, 8\) does not match the expected \(64, 4\)"),
    ("self_attn.v_proj.scales", (1, 32), torch.float16, r"shape \(1, 32\) does not match the expected \(2, 32\)"),
    ("mlp.up_proj.qzeros", (2, 15), torch.int32, r"shape \(2, 15\) does not match the expected \(2, 16\)"),
])
def test_wrong_shapes_are_named(name, shape, dtype, needle, awq_llama, edited_checkpoint):
    folder = edited_checkpoint(awq_llama, lambda s: s.__setitem__(LAYER0 + name, torch.zeros(shape, dtype=dtype)))
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{LAYER0}{name}': .*{needle}"):
        load(folder)


def test_missing_qzeros_of_a_plain_layer(awq_llama, edited_checkpoint):
    folder = edited_checkpoint(awq_llama, lambda s: s.pop(LAYER0 + "mlp.down_proj.qzeros"))
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\).*'model.layers.0.mlp.down_proj.qzeros'"):
        load(folder)


@pytest.mark.parametrize("piece, shard", [("self_attn.v_proj", "'v'"), ("mlp.gate_proj", "0")])
def test_missing_qzeros_of_a_fused_piece(piece, shard, awq_llama, edited_checkpoint):
    folder = edited_checkpoint(awq_llama, lambda s: s.pop(LAYER0 + piece + ".qzeros"))
    with pytest.raises(ValueError, match=rf"lacks '{LAYER0}{piece}.qzeros' \(shard {shard} of the fused"):
        load(folder)


def test_float_weight_where_the_config_says_awq(awq_llama, edited_checkpoint):
    def edit(state):
        for suffix in ("qweight", "qzeros", "scales"):
            state.pop(LAYER0 + "self_attn.o_proj." + suffix)
        state[LAYER0 + "self_attn.o_proj.weight"] = torch.zeros(64, 64)

    with pytest.raises(ValueError, match=r"lacks 3 weight\(s\).*'model.layers.0.self_attn.o_proj.qweight'"):
        load(edited_checkpoint(awq_llama, edit))


def test_awq_layer_the_skip_list_names(awq_llama, edited_checkpoint):
    folder = edited_checkpoint(awq_llama, edit_config=lambda c: c["quantization_config"].update(
        modules_to_not_convert=["layers.0.mlp.down_proj"]))
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\).*'model.layers.0.mlp.down_proj.weight'"):
        load(folder)
