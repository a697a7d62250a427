"""Cascade attention end to end (attention/cascade.py, kernels/cascade_attention.py): requests that share a
cached prefix decode through the prefix pass plus the seeded per-request attention, on the Triton backend
(Triton's interpreter on the CPU), and generate exactly the tokens of the same engine without cascade and of
the torch reference backend.

The thresholds (at least CASCADE_MIN_REQS requests, a prefix of CASCADE_MIN_PREFIX_TOKENS) and the SM count of
the cost model are lowered so a tiny model and a handful of requests take the cascade path in seconds.
"""

from __future__ import annotations

import pytest

from pagoda import LLM, SamplingParams
from pagoda.attention import backend as attn_backend
from pagoda.attention import cascade

pytest.importorskip("triton")

PREFIX = [(7 * i + 3) % 200 + 10 for i in range(40)]  # 40 tokens: 2 full blocks of 16 are shared
SUFFIXES = [[5 + r, 9 + 2 * r, 30 + r] for r in range(6)]
PARAMS = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


def _generate(folder, monkeypatch, backend: str, use_cascade: bool):
    monkeypatch.setenv(attn_backend.ATTENTION_BACKEND_ENV, backend)
    monkeypatch.setenv(cascade.CASCADE_ENV, "1" if use_cascade else "0")
    monkeypatch.setattr(cascade, "CASCADE_MIN_REQS", 4)
    monkeypatch.setattr(cascade, "CASCADE_MIN_PREFIX_TOKENS", 32)
    monkeypatch.setattr(attn_backend.AttentionMetadataBuilder, "_sms", lambda self: 1)
    llm = LLM(folder, max_model_len=128, block_size=16, enable_prefix_caching=True, max_num_seqs=8)
    runner = llm.llm_engine.core.executor.worker.runner
    assert runner.cascade == (backend == "triton" and use_cascade)
    llm.generate([{"prompt_token_ids": PREFIX}], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    outs = llm.generate([{"prompt_token_ids": PREFIX + s} for s in SUFFIXES], PARAMS, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], runner.num_cascade_steps


def test_cascade_decode_equals_plain_attention(checkpoint, monkeypatch):
    folder = checkpoint("LlamaForCausalLM")
    with_cascade, steps = _generate(folder, monkeypatch, "triton", True)
    assert steps >= 4  # the batch's decode steps (all six requests share 2 blocks) ran the prefix pass
    without, none = _generate(folder, monkeypatch, "triton", False)
    assert none == 0
    reference, _ = _generate(folder, monkeypatch, "torch", True)
    assert with_cascade == without == reference
    assert len({tuple(t) for t in with_cascade}) > 1  # the suffixes matter: not one answer for all


def test_disable_cascade_attn_turns_it_off(checkpoint, monkeypatch):
    """vLLM's --disable-cascade-attn: the runner never plans a cascade step (and its graphs carry no prefix pass)."""
    monkeypatch.setenv(attn_backend.ATTENTION_BACKEND_ENV, "triton")
    folder = checkpoint("LlamaForCausalLM")
    assert LLM(folder, max_model_len=128).llm_engine.core.executor.worker.runner.cascade
    assert not LLM(folder, max_model_len=128, disable_cascade_attn=True).llm_engine.core.executor.worker.runner.cascade
