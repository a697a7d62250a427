"""The architecture registry: supported names, errors, out-of-tree models and hf_overrides."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from pagoda.model_executor.models import ModelRegistry, max_model_len_cap
from pagoda.model_executor.models.llama import LlamaForCausalLM
from pagoda.model_executor.layers.rotary import rope_settings

ALL = ["GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "OPTForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]


def test_supported_archs():
    assert set(ALL) <= set(ModelRegistry.get_supported_archs())


def test_unsupported_architecture_lists_supported():
    with pytest.raises(ValueError) as info:
        ModelRegistry.resolve_model_cls(["FancyNewForCausalLM"])
    message = str(info.value)
    assert "Model architectures ['FancyNewForCausalLM'] are not supported" in message
    assert all(arch in message for arch in ALL)


def test_first_supported_architecture_wins():
    assert ModelRegistry.resolve_model_cls(["Nope", "LlamaForCausalLM"]) is LlamaForCausalLM


class OutOfTreeLlama(LlamaForCausalLM):
    """Stands in for a user's model class."""


def test_register_out_of_tree_class(checkpoint, pagoda_loader):
    ModelRegistry.register_model("OutOfTreeForCausalLM", OutOfTreeLlama)
    ModelRegistry.register_model("OutOfTreeByPath", "pagoda.model_executor.models.qwen2:Qwen2ForCausalLM")
    assert "OutOfTreeForCausalLM" in ModelRegistry.get_supported_archs()
    assert ModelRegistry.resolve_model_cls(["OutOfTreeByPath"]).__name__ == "Qwen2ForCausalLM"
    model = pagoda_loader(checkpoint("LlamaForCausalLM"), hf_overrides={"architectures": ["OutOfTreeForCausalLM"]})
    assert type(model) is OutOfTreeLlama


def test_register_rejects_bad_entries():
    with pytest.raises(ValueError, match="model_cls"):
        ModelRegistry.register_model("Bad", "no_colon_here")
    with pytest.raises(TypeError, match="model_cls"):
        ModelRegistry.register_model("Bad", 42)


def test_hf_overrides_architectures(checkpoint, tmp_path, pagoda_loader, prompt_ids, compare):
    src = checkpoint("LlamaForCausalLM")
    dst = str(tmp_path / "renamed")
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        config = json.load(f)
    config["architectures"] = ["SomethingUnknownForCausalLM"]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="not supported. Supported:"):
        pagoda_loader(dst)
    overrides = {"architectures": ["LlamaForCausalLM"]}
    model = pagoda_loader(dst, hf_overrides=overrides)
    assert type(model) is LlamaForCausalLM
    ref = pagoda_loader(src)
    for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n


def test_max_model_len_cap():
    from transformers import MistralConfig, Qwen2Config

    assert max_model_len_cap(MistralConfig(sliding_window=128, max_position_embeddings=512)) == 128
    assert max_model_len_cap(MistralConfig(sliding_window=None, max_position_embeddings=512)) is None
    assert max_model_len_cap(MistralConfig(sliding_window=4096, max_position_embeddings=512)) is None
    assert max_model_len_cap(Qwen2Config(sliding_window=128, use_sliding_window=False)) is None


def test_rope_settings_reads_old_and_new_spellings():
    old = SimpleNamespace(rope_theta=500000.0, rope_scaling={"type": "llama3", "factor": 8.0})
    assert rope_settings(old)["rope_theta"] == 500000.0 and rope_settings(old)["rope_type"] == "llama3"
    new = SimpleNamespace(rope_parameters={"rope_theta": 1e6, "rope_type": "default"})
    assert rope_settings(new)["rope_theta"] == 1e6 and rope_settings(new)["partial_rotary_factor"] == 1.0
    bare = SimpleNamespace()
    assert rope_settings(bare)["rope_theta"] == 10000.0
