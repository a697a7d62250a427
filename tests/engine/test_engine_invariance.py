"""Outputs do not change with prefix caching, block size, chunking, preemption, or churn."""

import pytest

from pagoda import LLM, SamplingParams
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine_args import EngineArgs
from tests.engine.conftest import PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


def _prompts_with_shared_prefixes():
    shared = "class Foo(object):\n    def __init__(self, x):\n        self.x = x\n"
    return PROMPTS + [shared + "    def bar(self):", shared + "    def baz(self, y):", shared + "    def bar(self):"]


def _run(folder, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)  # on a GPU, the engines of one test process fit side by side
    llm = LLM(folder, dtype="float32", max_model_len=256, **kwargs)
    outs = llm.generate(_prompts_with_shared_prefixes(), GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs], llm


@pytest.fixture(scope="module")
def reference(llama_dir):
    tokens, _ = _run(llama_dir, enable_prefix_caching=False, block_size=16)
    return tokens


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(enable_prefix_caching=True, block_size=8),
        dict(enable_prefix_caching=True, block_size=32),
        dict(enable_prefix_caching=False, block_size=8, max_num_batched_tokens=7),
        dict(enable_prefix_caching=True, block_size=8, max_num_batched_tokens=5),
        dict(enable_prefix_caching=False, enable_chunked_prefill=False, max_num_batched_tokens=256),
        dict(enable_prefix_caching=True, block_size=8, max_num_seqs=3),
        dict(async_scheduling=False, block_size=8, max_num_batched_tokens=9),
    ],
    ids=["cache-bs8", "cache-bs32", "chunk7-bs8", "cache-chunk5", "no-chunking", "max-seqs-3", "sync-chunk9"],
)
def test_same_outputs_across_engine_settings(llama_dir, reference, kwargs):
    tokens, _ = _run(llama_dir, **kwargs)
    assert tokens == reference


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_preemption_keeps_outputs(llama_dir, reference, async_scheduling):
    # 40 blocks x 8 tokens: the 11 prompts (up to ~60 tokens + 16 generated) cannot all fit at once.
    tokens, llm = _run(llama_dir, block_size=8, num_gpu_blocks_override=40, enable_prefix_caching=False,
                       async_scheduling=async_scheduling)
    assert tokens == reference
    assert llm.llm_engine.stats()["num_preemptions"] > 0
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_prefix_cache_is_used(llama_dir, reference):
    tokens, llm = _run(llama_dir, block_size=8, enable_prefix_caching=True)
    assert tokens == reference
    assert llm.llm_engine.stats()["prefix_cache_hits"] > 0


def test_requests_added_and_aborted_while_others_run(llama_dir, reference):
    engine = LLMEngine.from_engine_args(EngineArgs(model=llama_dir, dtype="float32", max_model_len=256,
                                                   block_size=8, max_num_batched_tokens=16,
                                                   kv_cache_memory_bytes=64 << 20))
    prompts = _prompts_with_shared_prefixes()
    finished = {}
    engine.add_request("0", prompts[0], GREEDY)
    engine.add_request("victim-1", prompts[1], GREEDY)
    next_prompt, steps = 1, 0
    while engine.has_unfinished_requests() or next_prompt < len(prompts):
        steps += 1
        if steps % 2 == 0 and next_prompt < len(prompts):
            engine.add_request(str(next_prompt), prompts[next_prompt], GREEDY)
            next_prompt += 1
        if steps == 3:
            engine.abort_request("victim-1")
            engine.add_request("victim-2", prompts[2], GREEDY)
        if steps == 6:
            engine.abort_request("victim-2")
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
    assert "victim-1" not in finished and "victim-2" not in finished
    assert [finished[str(i)] for i in range(len(prompts))] == reference
    pool = engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


@pytest.mark.parametrize("kwargs", [dict(max_num_seqs=1), dict(max_num_seqs=1, max_num_batched_tokens=24)],
                         ids=["lone-prompts", "lone-chunks24"])
def test_lone_prefills_padded_to_graph_buckets(llama_dir, reference, kwargs):
    """A lone request's prefill padded to a prefill-graph bucket (what CUDA graphs replay; here eager on the CPU):
    the padding writes no KV and is never sampled, so outputs and prompt logprobs do not change, with prefix
    cache hits (queries that start past 0) and chunks."""
    prompt_logprobs = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, prompt_logprobs=2)
    llm = LLM(llama_dir, dtype="float32", max_model_len=256, kv_cache_memory_bytes=64 << 20,
              enable_prefix_caching=True, block_size=8, **kwargs)
    expected_logprobs = llm.generate(PROMPTS[:2], prompt_logprobs, use_tqdm=False)
    runner = llm.llm_engine.core.executor.worker.runner
    runner.pad_prefill_lens = (16, 32, 64)
    padded = []
    choose = runner._prefill_graph_len
    runner._prefill_graph_len = lambda *args: padded.append(choose(*args)) or padded[-1]
    outs = llm.generate(_prompts_with_shared_prefixes(), GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == reference
    assert any(o.num_cached_tokens for o in outs)
    got_logprobs = llm.generate(PROMPTS[:2], prompt_logprobs, use_tqdm=False)
    for want, have in zip(expected_logprobs, got_logprobs):
        assert have.outputs[0].token_ids == want.outputs[0].token_ids
        for a, b in zip(want.prompt_logprobs[1:], have.prompt_logprobs[1:]):
            assert a.keys() == b.keys() and all(abs(a[t].logprob - b[t].logprob) < 1e-4 for t in a)
    assert sum(q is not None for q in padded) >= len(outs), padded
