"""Draft-model speculative decoding end to end: greedy outputs are token-identical to decoding without
it, for every architecture and under prefix caching, chunked prefill and preemption; a draft identical
to the target accepts (nearly) every draft.

A draft identical to the target makes runs of accepted drafts (multi-token steps, lookahead slots,
the draft's cache mirroring the target's across chunks and preemption); a smaller random draft with
the same tokenizer makes rejections at every position.
"""

import pytest
import torch

from pagoda import LLM, SamplingParams
from tests.engine.conftest import ARCHS, PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
K = 4


def _llm(folder, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)  # engines of one test process fit side by side on a GPU
    return LLM(folder, dtype="float32", max_model_len=256, **kwargs)


def _tokens(llm, params=GREEDY, prompts=PROMPTS):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def _draft(folder):
    return {"model": folder, "num_speculative_tokens": K}


@pytest.fixture(scope="module")
def small_draft(checkpoint):
    return checkpoint("LlamaForCausalLM", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                      num_attention_heads=2, num_key_value_heads=1, seed=7)


@pytest.fixture(scope="module")
def reference(llama_dir):
    return _tokens(_llm(llama_dir))


@pytest.mark.parametrize("arch", ARCHS)
def test_draft_identical_to_target_accepts_nearly_everything(checkpoint, small_draft, arch):
    folder = checkpoint(arch)
    expected = _tokens(_llm(folder))
    llm = _llm(folder, speculative_config=_draft(folder))
    assert _tokens(llm) == expected
    stats = llm.llm_engine.stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    assert stats["spec_decode_num_accepted_tokens"] >= 0.9 * stats["spec_decode_num_draft_tokens"]
    # A smaller draft of another architecture with the same tokenizer: rejections, the same tokens.
    small = _llm(folder, speculative_config=_draft(small_draft))
    assert _tokens(small) == expected
    assert small.llm_engine.stats()["spec_decode_num_draft_tokens"] > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(enable_prefix_caching=True, block_size=8),
        dict(enable_prefix_caching=True, block_size=8, max_num_batched_tokens=7),
        dict(enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=40),
    ],
    ids=["prefix-cache", "chunked-7", "preemption"],
)
@pytest.mark.parametrize("which", ["same", "small"])
def test_draft_greedy_invariant_under_engine_settings(llama_dir, small_draft, reference, kwargs, which):
    draft = llama_dir if which == "same" else small_draft
    llm = _llm(llama_dir, speculative_config=_draft(draft), **kwargs)
    prompts = PROMPTS + PROMPTS[:3]  # repeated prompts: prefix-cache hits on the draft's cache too
    assert _tokens(llm, prompts=prompts) == reference + reference[:3]
    stats = llm.llm_engine.stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    if which == "same":
        assert stats["spec_decode_num_accepted_tokens"] >= 0.9 * stats["spec_decode_num_draft_tokens"]
    else:
        assert stats["spec_decode_num_accepted_tokens"] < stats["spec_decode_num_draft_tokens"]
    if "num_gpu_blocks_override" in kwargs:
        assert stats["num_preemptions"] > 0
    if kwargs.get("enable_prefix_caching"):
        assert stats["prefix_cache_hits"] > 0
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_draft_sampling_is_seeded_and_stops_exactly(llama_dir):
    llm = _llm(llama_dir, speculative_config=_draft(llama_dir))
    seeded = [SamplingParams(temperature=0.8, top_k=20, seed=i, max_tokens=21, ignore_eos=True)
              for i in range(len(PROMPTS))]
    first = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, seeded, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[::-1], seeded[::-1], use_tqdm=False)][::-1]
    assert first == again and all(len(t) == 21 for t in first)
    plain = _llm(llama_dir)
    full = _tokens(plain)
    stop_ids = sorted({t[5] for t in full})
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop_token_ids=stop_ids, logprobs=2)
    want = plain.generate(PROMPTS, params, use_tqdm=False)
    got = llm.generate(PROMPTS, params, use_tqdm=False)
    for g, w in zip(got, want):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        assert g.outputs[0].finish_reason == w.outputs[0].finish_reason
        assert [list(p) for p in g.outputs[0].logprobs] == [list(p) for p in w.outputs[0].logprobs]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_draft_forwards_replay_their_own_cuda_graphs(llama_dir, reference):
    llm = _llm(llama_dir, speculative_config=_draft(llama_dir))
    assert _tokens(llm) == reference
    replays = llm.llm_engine.core.executor.worker.runner.spec.draft.cuda_graphs.num_replays
    assert replays[1] > 0 and replays[K + 1] > 0, replays


def test_a_draft_with_fewer_positions_stops_drafting_at_its_limit(checkpoint, llama_dir, reference):
    short = checkpoint("LlamaForCausalLM", num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=40, seed=3)
    llm = _llm(llama_dir, speculative_config=_draft(short))
    assert llm.llm_engine.config.speculative.max_model_len == 40
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert max(len(o.prompt_token_ids) for o in outs) + 24 > 40  # some requests run past the draft's limit


@pytest.mark.parametrize("which", ["same", "small"])
def test_draft_with_async_scheduling_off_copies_its_drafts_to_the_host(llama_dir, small_draft, reference, which):
    """The default keeps async scheduling on (drafts stay on the device); with it off, each step's drafts come to
    the host and are scheduled as ids — the same tokens either way."""
    draft = llama_dir if which == "same" else small_draft
    llm = _llm(llama_dir, speculative_config=_draft(draft), async_scheduling=False)
    assert llm.llm_engine.config.scheduler.async_scheduling is False
    assert _tokens(llm) == reference
    stats = llm.llm_engine.stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    if which == "same":
        assert stats["spec_decode_num_accepted_tokens"] >= 0.9 * stats["spec_decode_num_draft_tokens"]


def test_draft_with_padded_verify_steps(llama_dir, small_draft, reference):
    """Verify steps padded to k + 1 query tokens (how a GPU replays graphs when requests carry different numbers
    of drafts), forced on the CPU: the draft's catch-up runs over the padded batch too."""
    for draft in (llama_dir, small_draft):
        llm = _llm(llama_dir, speculative_config=_draft(draft), enable_prefix_caching=True, block_size=8)
        llm.llm_engine.core.executor.worker.runner.pad_query_lens = (1, K + 1)
        assert _tokens(llm, prompts=PROMPTS + PROMPTS[:3]) == reference + reference[:3]
        assert llm.llm_engine.stats()["spec_decode_num_draft_tokens"] > 0
