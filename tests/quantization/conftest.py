"""Fixtures for quantization tests: the session's tokenizer, tiny float and FP8 checkpoints built on
demand (pagoda.tiny_quantized_models), prompts, and a one-thread torch (on a 2-core machine shared with other
work, two OpenMP threads make tiny matmuls ~100x slower)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from pagoda.tiny_models import make_checkpoint, train_tokenizer
from pagoda.tiny_quantized_models import make_fp8_checkpoint

PROMPTS = ["import os", "def main():\n    return", "class Foo(object):\n    def __init__(self, x):", "x = 1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> str:
    return train_tokenizer(str(tmp_path_factory.mktemp("quant-tokenizer")))


@pytest.fixture(scope="session")
def prompt_ids(tok_dir) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return [tokenizer(p).input_ids for p in PROMPTS]


@pytest.fixture(scope="session")
def float_checkpoint(tmp_path_factory, tok_dir):
    """float_checkpoint(arch, **overrides) -> folder of a tiny fp32 model, built once per arguments."""
    made: dict = {}

    def get(arch: str = "LlamaForCausalLM", **overrides) -> str:
        key = (arch, tuple(sorted(overrides.items())))
        if key not in made:
            made[key] = make_checkpoint(arch, str(tmp_path_factory.mktemp(arch)), tok_dir, **overrides)
        return made[key]

    return get


@pytest.fixture(scope="session")
def fp8_checkpoint(tmp_path_factory, tok_dir):
    """fp8_checkpoint(arch, weight_scales=..., activation_scheme=..., ignored_layers=(), ...) -> folder."""
    made: dict = {}

    def get(arch: str = "LlamaForCausalLM", **kwargs) -> str:
        key = (arch, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())))
        if key not in made:
            made[key] = make_fp8_checkpoint(arch, str(tmp_path_factory.mktemp("fp8-" + arch)), tok_dir, **kwargs)
        return made[key]

    return get


@pytest.fixture
def edited_checkpoint(tmp_path):
    """edited_checkpoint(folder, edit_state=None, edit_config=None) -> a copy of `folder` whose tensors
    (a dict name -> tensor) and config.json (a dict) the callables changed in place."""
    from safetensors.torch import load_file, save_file

    def make(folder: str, edit_state=None, edit_config=None) -> str:
        out = str(tmp_path / f"edited-{len(os.listdir(tmp_path))}")
        shutil.copytree(folder, out)
        if edit_state is not None:
            state = load_file(os.path.join(out, "model.safetensors"))
            edit_state(state)
            save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        if edit_config is not None:
            with open(os.path.join(out, "config.json")) as f:
                config = json.load(f)
            edit_config(config)
            with open(os.path.join(out, "config.json"), "w") as f:
                json.dump(config, f)
        return out

    return make
