"""GPTQ configs: detected from config.json and AutoGPTQ's quantize_config.json, confirmed by quantization="gptq";
bad or unsupported settings and malformed tensors are ValueErrors naming the field or the checkpoint tensor."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from gptq_reference import gptq_checkpoint
from pagoda import LLM
from pagoda.model_executor.layers.quantization import resolve_quantization

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
LAYER0 = "model.layers.0."


@pytest.mark.parametrize("user", [None, "gptq", "GPTQ"])
def test_detected_or_confirmed(user, tmp_path):
    assert resolve_quantization(user, SimpleNamespace(quantization_config=dict(GPTQ)), None) == ("gptq", GPTQ)
    (tmp_path / "quantize_config.json").write_text(json.dumps({k: v for k, v in GPTQ.items() if k != "quant_method"}))
    assert resolve_quantization(user, SimpleNamespace(), str(tmp_path))[0] == "gptq"


@pytest.mark.parametrize("edit, needle", [
    ({"bits": 3}, r"quantization_config.bits=3 is not supported yet"),
    ({"bits": 2}, r"quantization_config.bits=2 is not supported yet"),
    ({"bits": 5}, r"quantization_config.bits=5 is not supported"),
    ({"group_size": 0}, r"quantization_config.group_size=0 is not a group size"),
    ({"desc_act": "yes"}, r"quantization_config.desc_act='yes' must be true or false"),
    ({"checkpoint_format": "marlin"}, r"quantization_config.checkpoint_format='marlin' is not supported yet"),
    ({"lm_head": True}, r"quantization_config.lm_head=true .* is not supported yet"),
    ({"dynamic": {"-:.*mlp.*": {}}}, r"quantization_config.dynamic .* is not supported yet"),
])
def test_bad_settings_name_the_field(edit, needle):
    with pytest.raises(ValueError, match=needle):
        resolve_quantization(None, SimpleNamespace(quantization_config={**GPTQ, **edit}), None)


@pytest.fixture(scope="module")
def gptq_llama(tmp_path_factory, tok_dir):
    return gptq_checkpoint(tmp_path_factory, tok_dir, "LlamaForCausalLM", bits=4, group_size=32, desc_act=True)


# Llama tiny: hidden 64, intermediate 128, q 64 / k 32 / v 32 outputs; 4-bit (8 per int32), group 32
@pytest.mark.parametrize("name, shape, dtype, needle", [
    ("self_attn.o_proj.qweight", (64, 64), torch.int32, r"shape \(64, 64\) does not match the expected \(8, 64\)"),
    ("self_attn.k_proj.qzeros", (2, 8), torch.int32, r"shape \(2, 8\) does not match the expected \(2, 4\)"),
    ("mlp.up_proj.scales", (4, 128), torch.float16, r"shape \(4, 128\) does not match the expected \(2, 128\)"),
    ("mlp.down_proj.g_idx", (64,), torch.int32, r"shape \(64,\) does not match the expected \(128,\)"),
])
def test_wrong_shapes_are_named(name, shape, dtype, needle, gptq_llama, edited_checkpoint):
    folder = edited_checkpoint(gptq_llama, lambda s: s.__setitem__(LAYER0 + name, torch.zeros(shape, dtype=dtype)))
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{LAYER0}{name}': .*{needle}"):
        LLM(folder, dtype="float32", max_model_len=64)


def test_g_idx_out_of_range_and_missing(gptq_llama, edited_checkpoint):
    folder = edited_checkpoint(gptq_llama, lambda s: s[LAYER0 + "mlp.down_proj.g_idx"].fill_(4))
    with pytest.raises(ValueError, match=rf"{LAYER0}mlp.down_proj.g_idx: group indices 4 .. 4 are outside 0 .. 3"):
        LLM(folder, dtype="float32", max_model_len=64)
    folder = edited_checkpoint(gptq_llama, lambda s: s.pop(LAYER0 + "self_attn.o_proj.g_idx"))
    with pytest.raises(ValueError, match=rf"lacks 1 weight\(s\).*'{LAYER0}self_attn.o_proj.g_idx'"):
        LLM(folder, dtype="float32", max_model_len=64)


def test_fused_pieces_must_share_their_g_idx(gptq_llama, edited_checkpoint):
    """q, k and v (gate and up) read the same input, so one g_idx serves the fused layer: pieces that disagree
    are refused by name (the last piece's used to win)."""
    def permute_k(state):
        name = LAYER0 + "self_attn.k_proj.g_idx"
        state[name] = state[name].flip(0).contiguous()

    folder = edited_checkpoint(gptq_llama, permute_k)
    # whichever of q and k loads second is named (the file's order)
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{LAYER0}self_attn.[qk]_proj.g_idx': piece '[qk]' of "
                                         rf"{LAYER0}self_attn.qkv_proj differs from its pieces"):
        LLM(folder, dtype="float32", max_model_len=64)
