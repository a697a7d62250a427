"""Start-up kernel warm-up (pagoda/worker/warmup.py), forced on CPU: it runs every planned dummy
batch through the real model but leaves the KV cache bitwise unchanged, the runner's requests
untouched and the next generation's tokens (greedy and random) the same as without it."""

import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda.engine_args import EngineArgs
from pagoda.worker.warmup import plan_batches, warm_up_kernels
from tests.engine.conftest import PROMPTS

PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
    SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12, ignore_eos=True),  # draws from the engine seed
]


def _generate(llm):
    outs = llm.generate(PROMPTS * 2, PARAMS[:1] * len(PROMPTS) + PARAMS[1:] * len(PROMPTS), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def _llm(folder, **kwargs):
    return LLM(folder, dtype="float32", max_model_len=256, block_size=8, **kwargs)


def _runner(llm):
    return llm.llm_engine.core.executor.worker.runner


def _bits(caches):
    return [kv.clone().view(torch.uint8) for kv in caches]


@pytest.fixture(scope="module")
def reference(llama_dir):
    return _generate(_llm(llama_dir))


@pytest.mark.parametrize("graph_max_size", [None, 8], ids=["no-graphs", "graphs-up-to-8"])
def test_warm_up_writes_nothing_and_keeps_outputs(llama_dir, reference, graph_max_size):
    llm = _llm(llama_dir)
    runner = _runner(llm)
    assert warm_up_kernels(runner) == 0  # not on CUDA and not forced: nothing runs
    generator = torch.Generator().manual_seed(1)
    for kv in runner.kv_caches:  # any write, even of zeros, would show against random contents
        kv.copy_(torch.randn(kv.shape, generator=generator))
    before = _bits(runner.kv_caches)
    rng_state = torch.get_rng_state()

    ran = warm_up_kernels(runner, graph_max_size, force=True)

    assert ran == len(plan_batches(runner.config, graph_max_size)) >= 7
    assert all(torch.equal(a, b.view(torch.uint8)) for a, b in zip(before, runner.kv_caches))
    assert runner.batch.row_of == {} and all(r is None for r in runner.batch.req_ids)
    assert not runner.unfilled and runner.last_sampled is None
    assert torch.equal(torch.get_rng_state(), rng_state)
    for kv in runner.kv_caches:
        kv.zero_()  # as allocated, so the run below matches the reference engine's bit for bit
    assert _generate(llm) == reference


def test_warm_up_between_runs_keeps_the_prefix_cache(llama_dir, reference):
    llm = _llm(llama_dir, enable_prefix_caching=True)
    assert _generate(llm) == reference
    runner = _runner(llm)
    before = _bits(runner.kv_caches)
    warm_up_kernels(runner, force=True)
    assert all(torch.equal(a, b.view(torch.uint8)) for a, b in zip(before, runner.kv_caches))
    hits = llm.llm_engine.stats()["prefix_cache_hits"]
    torch.manual_seed(llm.llm_engine.config.model.seed)  # the random rows draw as in a fresh engine
    assert _generate(llm) == reference
    assert llm.llm_engine.stats()["prefix_cache_hits"] > hits  # the second run read the first run's blocks


def test_pooling_model_runs_prefill_batches_only(llama_dir):
    llm = LLM(llama_dir, task="embed", dtype="float32", max_model_len=256)
    runner = _runner(llm)
    before = _bits(runner.kv_caches)
    assert warm_up_kernels(runner, force=True) == 3
    assert all(torch.equal(a, b.view(torch.uint8)) for a, b in zip(before, runner.kv_caches))
    assert all(max(b.query_lens) > 8 for b in plan_batches(runner.config, None))


@pytest.mark.parametrize(
    "kwargs, graph_max_size",
    [
        (dict(), None),
        (dict(max_num_seqs=1024, max_num_batched_tokens=16384, max_model_len=512), 512),
        (dict(max_num_seqs=1024, max_num_batched_tokens=16384, max_model_len=512), 1024),
        (dict(max_num_seqs=3, max_num_batched_tokens=40, max_model_len=64), None),
        (dict(max_num_batched_tokens=7, max_model_len=32, block_size=8), 4),
    ],
    ids=["defaults", "serve-h200", "llm-h200", "tiny-limits", "tiny-budget"],
)
def test_plan_respects_limits_and_covers_specializations(llama_dir, kwargs, graph_max_size):
    config = EngineArgs(model=llama_dir, dtype="float32", **{"max_model_len": 256, **kwargs}).create_config()
    sched, max_len = config.scheduler, config.model.max_model_len
    batches = plan_batches(config, graph_max_size)
    assert 0 < len(batches) <= 8
    max_width = -(-max_len // config.cache.block_size)
    for b in batches:
        assert b.num_reqs <= sched.max_num_seqs and 0 < b.num_tokens <= sched.max_num_batched_tokens, b
        assert all(0 < q <= s <= max_len for q, s in zip(b.query_lens, b.seq_lens)), b
        assert -(-max(b.seq_lens) // config.cache.block_size) <= b.block_table_width <= max_width, b
    if sched.max_num_seqs < 16 or sched.max_num_batched_tokens < 1024:
        return  # limits too tight for the full plan: validity is all that is asked
    prefill = [b for b in batches if max(b.query_lens) > 8]
    decode = [b for b in batches if max(b.query_lens) == 1]
    assert {b.num_tokens % 2 for b in prefill} == {0, 1}
    assert {b.num_tokens % 16 == 0 for b in prefill} == {True, False}
    reqs = {b.num_reqs for b in prefill}  # Triton specializes num_reqs on == 1, % 16 == 0, neither
    assert 1 in reqs and any(n % 16 == 0 for n in reqs) and any(n > 1 and n % 16 for n in reqs)
    assert any(b.block_table_width == 16 for b in prefill)
    assert any(min(b.query_lens) == 1 for b in prefill)  # a mixed prefill + decode batch
    if graph_max_size is None:
        assert sorted(b.num_reqs for b in decode) == [1, 7, 16]
    elif graph_max_size >= sched.max_num_seqs:
        assert decode == []  # every decode step replays a graph
    else:  # eager decodes past the largest graph: an odd size and a multiple of 16
        assert all(b.num_reqs > graph_max_size for b in decode)
        assert {b.num_reqs % 2 for b in decode} == {0, 1} and any(b.num_reqs % 16 == 0 for b in decode)


@pytest.mark.parametrize("graph_max_size", [512, 1024])
def test_cascade_plan_covers_the_prefix_pass_specializations(llama_dir, graph_max_size):
    """With cascade possible, the mixed cascade batches vary what Triton specializes on: the prefix pass's row
    count (tokens x group) and paged attention's request count and block-table width, in every pairing; each is a real
    cascade step's size (at least CASCADE_MIN_REQS requests), and the plan stays within its limits."""
    from pagoda.attention.cascade import CASCADE_MIN_REQS

    config = EngineArgs(model=llama_dir, dtype="float32", max_model_len=512, max_num_seqs=1024,
                        max_num_batched_tokens=16384).create_config()
    plain, batches = plan_batches(config, graph_max_size), plan_batches(config, graph_max_size, cascade=True)
    cascade = [b for b in batches if b.cascade]
    assert [b for b in batches if not b.cascade] == plain and len(batches) <= 13
    assert all(b.num_reqs >= CASCADE_MIN_REQS for b in cascade)
    mixed = [b for b in cascade if max(b.query_lens) > 8]
    group = config.model.hf_text_config.num_attention_heads // config.model.hf_text_config.num_key_value_heads
    assert {b.num_tokens * group % 16 == 0 for b in mixed} == {True, False}
    # each pairing of the two (Triton keys a variant on both at once; W8 compiled a missing pair mid-run)
    assert {(b.num_reqs % 16 == 0, b.block_table_width % 16 == 0) for b in mixed} == {
        (True, True), (True, False), (False, True), (False, False)}
    eager_decodes = [b for b in cascade if max(b.query_lens) == 1]
    assert bool(eager_decodes) == (graph_max_size < 1024)  # decode steps past the largest graph only
