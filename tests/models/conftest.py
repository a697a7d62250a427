"""Fixtures for model tests: one tokenizer per session, tiny checkpoints built on demand, and a
runner that feeds a flat batch through a Pagoda model over a real paged KV cache.

The runner plays the model runner's part by hand: contiguous block tables (request i owns blocks
i·M … i·M + M - 1), a prefill step of all prompts in one flat batch, then decode steps of one token
per request against the cache the prefill wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pagoda.attention.backend import AttentionMetadata
from pagoda.attention.torch_backend import TorchAttentionBackend
from pagoda.engine_args import EngineArgs
from pagoda.model_executor.model_loader import get_model
from pagoda.tiny_models import make_checkpoint, train_tokenizer

BLOCK_SIZE = 8
BLOCKS_PER_REQ = 8  # 64 positions per request
PROMPTS = [
    "import os\ndef main():",
    "class Foo(object):\n    def __init__(self, x, y):\n        self.x = x",
    "x = [i * 2 for i in range(10) if i % 3]",
]


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory) -> str:
    return train_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_folder)


@pytest.fixture(scope="session")
def prompt_ids(tokenizer) -> list[list[int]]:
    ids = [tokenizer(p).input_ids for p in PROMPTS]
    assert len({len(x) for x in ids}) == len(ids), "prompts must have different lengths"
    return ids


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer_folder):
    """checkpoint(arch, **overrides) -> folder; built once per (arch, overrides) in the session."""
    cache: dict[str, str] = {}

    def build(arch: str, **overrides) -> str:
        key = arch + repr(sorted(overrides.items()))
        if key not in cache:
            folder = str(tmp_path_factory.mktemp(arch))
            cache[key] = make_checkpoint(arch, folder, tokenizer_folder, **overrides)
        return cache[key]

    return build


def load_pagoda(folder: str, **engine_kwargs):
    """Our model for `folder` through the real config path, fp32 on CPU with the torch backend."""
    kwargs = {"model": folder, "device": "cpu", "dtype": "float32", **engine_kwargs}
    config = EngineArgs(**kwargs).create_config()
    return get_model(config.model, config.load, "cpu", TorchAttentionBackend())


def load_hf(folder: str, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()


@dataclass
class StepResult:
    logits: list[torch.Tensor]  # per request: [query_len, vocab]


class PagedRunner:
    """Runs a Pagoda model over a KV cache the way the engine does: flat batches, paged slots."""

    def __init__(self, model, num_reqs: int):
        spec = model.kv_cache_spec
        self.model = model
        self.num_reqs = num_reqs
        num_blocks = num_reqs * BLOCKS_PER_REQ
        shape = (2, num_blocks, BLOCK_SIZE, spec.num_kv_heads, spec.head_size)
        dtype = next(model.parameters()).dtype
        self.kv_caches = [torch.zeros(shape, dtype=dtype) for _ in range(spec.num_layers)]
        self.block_tables = torch.arange(num_blocks, dtype=torch.int32).view(num_reqs, BLOCKS_PER_REQ)
        self.seq_lens = [0] * num_reqs

    def step(self, new_tokens: list[list[int]]) -> StepResult:
        """Append `new_tokens[i]` to request i and return the logits of every new token."""
        input_ids, positions, slots, starts = [], [], [], [0]
        for i, tokens in enumerate(new_tokens):
            for j, tok in enumerate(tokens):
                pos = self.seq_lens[i] + j
                input_ids.append(tok)
                positions.append(pos)
                slots.append(int(self.block_tables[i, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE)
            starts.append(starts[-1] + len(tokens))
            self.seq_lens[i] += len(tokens)
        metadata = AttentionMetadata(
            num_reqs=self.num_reqs,
            num_tokens=len(input_ids),
            max_query_len=max(len(t) for t in new_tokens),
            max_seq_len=max(self.seq_lens),
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            seq_lens=torch.tensor(self.seq_lens, dtype=torch.int32),
            block_tables=self.block_tables,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_start_loc_cpu=starts,
            seq_lens_cpu=list(self.seq_lens),
        )
        with torch.inference_mode():
            hidden = self.model(
                torch.tensor(input_ids, dtype=torch.int64),
                torch.tensor(positions, dtype=torch.int64),
                self.kv_caches,
                metadata,
            )
            logits = self.model.compute_logits(hidden)
        return StepResult([logits[starts[i] : starts[i + 1]] for i in range(self.num_reqs)])


def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([ids])).logits[0].float()


def compare_with_hf(folder: str, prompt_ids: list[list[int]], decode_steps: int = 2, atol: float = 1e-4, **engine_kwargs):
    """Prefill + `decode_steps` greedy decodes through Pagoda; assert logits match transformers'.

    Returns the greedy tokens Pagoda produced per request.
    """
    model = load_pagoda(folder, **engine_kwargs)
    hf = load_hf(folder)
    runner = PagedRunner(model, len(prompt_ids))
    result = runner.step(prompt_ids)
    seqs = [list(p) for p in prompt_ids]
    generated: list[list[int]] = [[] for _ in prompt_ids]
    for step in range(decode_steps + 1):
        for i, seq in enumerate(seqs):
            ref = hf_logits(hf, seq)
            ours = result.logits[i]
            assert ours.shape[-1] == ref.shape[-1], (ours.shape, ref.shape)
            ref = ref[-ours.shape[0] :]
            # fp32 rounding grows with the logits' scale (tiny random models reach |logit| ~ 80)
            tol = atol * max(1.0, float(ref.abs().max()) / 10)
            torch.testing.assert_close(ours, ref, atol=tol, rtol=1e-4, msg=lambda m: f"step {step}, request {i}: {m}")
        if step == decode_steps:
            break
        next_tokens = [int(r[-1].argmax()) for r in result.logits]
        for i, tok in enumerate(next_tokens):
            seqs[i].append(tok)
            generated[i].append(tok)
        result = runner.step([[t] for t in next_tokens])
    return generated


@pytest.fixture(scope="session")
def compare():
    return compare_with_hf


@pytest.fixture(scope="session")
def paged_runner():
    return PagedRunner


@pytest.fixture(scope="session")
def pagoda_loader():
    return load_pagoda


@pytest.fixture(scope="session")
def hf_loader():
    return load_hf
