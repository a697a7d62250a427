"""Fixtures for the benchmark tests: a tiny real Llama checkpoint with a trained tokenizer."""

from __future__ import annotations

import pytest

from pagoda.tiny_models import make_checkpoint, train_tokenizer


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    tok = train_tokenizer(str(tmp_path_factory.mktemp("bench_tokenizer")))
    folder = str(tmp_path_factory.mktemp("bench_tiny_llama"))
    return make_checkpoint("LlamaForCausalLM", folder, tok, num_hidden_layers=2, hidden_size=64,
                           intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
