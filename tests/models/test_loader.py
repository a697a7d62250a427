"""Weight loading: formats, sharded checkpoints, dummy weights, and the errors users see."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pagoda.attention.torch_backend import TorchAttentionBackend
from pagoda.engine_args import EngineArgs
from pagoda.model_executor.model_loader import get_model


def _config_only_copy(src: str, dst: str) -> str:
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if not name.endswith((".safetensors", ".bin")) and os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), dst)
    return dst


def test_model_is_eval_fp32_on_cpu(checkpoint, pagoda_loader):
    model = pagoda_loader(checkpoint("LlamaForCausalLM"))
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_bfloat16_dtype(checkpoint, pagoda_loader):
    model = pagoda_loader(checkpoint("LlamaForCausalLM"), dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.model.layers[0].self_attn.rotary_emb.cos_sin_cache.dtype == torch.float32


def test_sharded_safetensors_reads_only_indexed_files(checkpoint, tmp_path, prompt_ids, compare):
    src = checkpoint("Qwen2ForCausalLM")
    dst = _config_only_copy(src, str(tmp_path / "sharded"))
    state = load_file(os.path.join(src, "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, os.path.join(dst, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    # A stray file the index does not name: reading it would fail the shape check.
    save_file({"model.norm.weight": torch.zeros(3)}, os.path.join(dst, "stray.safetensors"))
    compare(dst, prompt_ids, decode_steps=1)


def test_pt_bin_weights(checkpoint, tmp_path, prompt_ids, compare):
    src = checkpoint("GPT2LMHeadModel")
    dst = _config_only_copy(src, str(tmp_path / "bin"))
    torch.save(load_file(os.path.join(src, "model.safetensors")), os.path.join(dst, "pytorch_model.bin"))
    compare(dst, prompt_ids, decode_steps=1)
    compare(dst, prompt_ids, decode_steps=0, load_format="pt")
    with pytest.raises(ValueError, match=r"safetensors"):
        compare(dst, prompt_ids, decode_steps=0, load_format="safetensors")


def test_dummy_weights_need_no_files_and_are_deterministic(checkpoint, tmp_path, pagoda_loader, paged_runner, prompt_ids):
    folder = _config_only_copy(checkpoint("LlamaForCausalLM"), str(tmp_path / "dummy"))
    a = pagoda_loader(folder, load_format="dummy")
    b = pagoda_loader(folder, load_format="dummy")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
        assert pa.abs().max() <= 1e-3
    logits = paged_runner(a, len(prompt_ids)).step(prompt_ids).logits
    assert all(torch.isfinite(x).all() for x in logits)


def test_missing_weight_files_error_names_model_and_patterns(checkpoint, tmp_path, pagoda_loader):
    folder = _config_only_copy(checkpoint("LlamaForCausalLM"), str(tmp_path / "empty"))
    with pytest.raises(ValueError) as info:
        pagoda_loader(folder)
    message = str(info.value)
    assert "model=" in message and folder in message
    assert "*.safetensors" in message and "*.bin" in message


def test_checkpoint_lacking_weights_lists_them(checkpoint, tmp_path, pagoda_loader):
    src = checkpoint("LlamaForCausalLM")
    dst = _config_only_copy(src, str(tmp_path / "partial"))
    state = load_file(os.path.join(src, "model.safetensors"))
    del state["model.norm.weight"]
    save_file(state, os.path.join(dst, "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 1 weight.*model\.norm\.weight"):
        pagoda_loader(dst)


def test_get_model_direct_call(checkpoint):
    config = EngineArgs(model=checkpoint("Qwen3ForCausalLM"), device="cpu").create_config()
    model = get_model(config.model, config.load, "cpu", TorchAttentionBackend())
    assert type(model).__name__ == "Qwen3ForCausalLM"


def test_an_unreadable_weight_file_is_named(checkpoint, monkeypatch):
    """A weight file this process may not read (a pod's arbitrary uid) is an error naming the file and the uid, not
    safetensors' "No such file or directory". os.access is faked: the tests may run as root, who reads anything."""
    from pagoda.model_executor.model_loader import weight_utils

    real_access = os.access
    monkeypatch.setattr(weight_utils.os, "access",
                        lambda path, mode: not str(path).endswith(".safetensors") and real_access(path, mode))
    with pytest.raises(ValueError, match=r"weight file 'model.safetensors' is not readable by this process \(uid"):
        weight_utils.find_weight_files(checkpoint("LlamaForCausalLM"))
