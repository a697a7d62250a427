"""Tiny checkpoints for end-to-end engine tests, built once per session, plus a transformers oracle."""

import pytest
import torch

from pagoda.tiny_models import make_checkpoint, train_tokenizer

ARCHS = [
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "OPTForCausalLM",
    "GPT2LMHeadModel",
]

PROMPTS = [
    "import os",
    "def main():\n    return",
    "class Foo(object):\n    def __init__(self, x):\n        self.x = x\n",
    "x = 1",
    "for i in range(10):\n    print(i)\n    if i > 3:\n        break\n# done with the loop, now",
    "Hello, my name is",
    "a",
    "with open(path) as f:\n    data = f.read()\n    lines = data.splitlines()\n    for line in lines:\n        if not line:\n            continue\n",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer_dir):
    """checkpoint(arch, **overrides) -> folder; cached per (arch, overrides)."""
    made = {}

    def get(arch="LlamaForCausalLM", **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(arch)
            made[key] = make_checkpoint(arch, str(folder), tokenizer_dir, **overrides)
        return made[key]

    return get


@pytest.fixture(scope="session")
def llama_dir(checkpoint):
    return checkpoint("LlamaForCausalLM")


def hf_greedy(folder, prompt_ids_list, max_new_tokens):
    """Greedy continuation and the chosen tokens' logprobs with transformers, one prompt at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for ids in prompt_ids_list:
            tokens = list(ids)
            logprobs = []
            for _ in range(max_new_tokens):
                logits = model(torch.tensor([tokens])).logits[0, -1].float()
                lp = torch.log_softmax(logits, -1)
                nxt = int(torch.argmax(logits))
                tokens.append(nxt)
                logprobs.append(float(lp[nxt]))
            results.append((tokens[len(ids):], logprobs))
    return results
