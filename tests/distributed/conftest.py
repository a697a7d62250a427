"""Tiny checkpoints for the tensor-parallel tests (CPU, gloo), built once per session."""

import os
import sys

import pytest

from pagoda.tiny_models import make_checkpoint, train_tokenizer

# the server helper of tests/entrypoints
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "entrypoints"))



@pytest.fixture(scope="session")
def tp_tokenizer_dir(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tp-tokenizer")))


@pytest.fixture(scope="session")
def tp_checkpoint(tmp_path_factory, tp_tokenizer_dir):
    """tp_checkpoint(arch, **overrides) -> folder; cached per (arch, overrides)."""
    made = {}

    def get(arch="LlamaForCausalLM", **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(arch)
            made[key] = make_checkpoint(arch, str(folder), tp_tokenizer_dir, **overrides)
        return made[key]

    return get
