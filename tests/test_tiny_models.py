"""pagoda.tiny_models: a real tokenizer and real, non-degenerate tiny checkpoints, built offline."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pagoda.tiny_models import DEMO_ARCH, ensure_demo_model, make_checkpoint, train_tokenizer


@pytest.fixture(scope="module")
def tok_folder(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_tokenizer_round_trips_and_chat_template(tok_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_folder)
    assert 1900 <= len(tok) <= 2100
    text = "def add(a, b):\n    return a + b  # ünïcode\n"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    for special in ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"):
        assert tok.convert_tokens_to_ids(special) is not None
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered == "<|bos|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    plain = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert not plain.endswith("assistant\n")


def test_tokenizer_is_deterministic(tok_folder, tmp_path):
    again = train_tokenizer(str(tmp_path / "again"))
    with open(os.path.join(tok_folder, "tokenizer.json")) as a, open(os.path.join(again, "tokenizer.json")) as b:
        assert json.load(a) == json.load(b)


def test_checkpoint_loads_in_transformers_with_varied_greedy_tokens(tok_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_checkpoint("LlamaForCausalLM", str(tmp_path / "llama"), tok_folder)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    tok = AutoTokenizer.from_pretrained(folder)
    with open(os.path.join(folder, "generation_config.json")) as f:
        assert tok.eos_token_id in json.load(f)["eos_token_id"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([tok("import sys\n").input_ids])
    out = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    assert len(set(out)) >= 8, out
    assert max(out) < len(tok)  # every emitted id decodes


def test_same_seed_same_weights(tok_folder, tmp_path):
    from safetensors.torch import load_file

    a = load_file(os.path.join(make_checkpoint("Qwen2ForCausalLM", str(tmp_path / "a"), tok_folder, seed=3), "model.safetensors"))
    b = load_file(os.path.join(make_checkpoint("Qwen2ForCausalLM", str(tmp_path / "b"), tok_folder, seed=3), "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_arch(tok_folder, tmp_path):
    with pytest.raises(ValueError, match="arch="):
        make_checkpoint("BertModel", str(tmp_path / "x"), tok_folder)


def test_demo_model_is_built_once(tmp_path):
    folder = ensure_demo_model(str(tmp_path / "demo"))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == [DEMO_ARCH] and config["hidden_size"] == 256
    stamp = os.path.getmtime(os.path.join(folder, "model.safetensors"))
    assert ensure_demo_model(folder) == folder
    assert os.path.getmtime(os.path.join(folder, "model.safetensors")) == stamp


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen3ForCausalLM", "OPTForCausalLM", "GPT2LMHeadModel"])
def test_greedy_output_is_not_one_repeated_token(arch, tok_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_checkpoint(arch, str(tmp_path / arch), tok_folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([tok("import os\ndef main():").input_ids])
    out = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    assert len(set(out)) >= 5, out
