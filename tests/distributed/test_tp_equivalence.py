"""TP=2 over the multiprocessing executor (gloo, CPU) gives TP=1's tokens: every architecture, KV-head
replication, prefix caching + chunked prefill + preemption, seeded and unseeded random sampling."""

import pytest

from tp_prompts import ARCHS, GREEDY, PROMPTS, generate, tokens
from pagoda import LLM, SamplingParams


def run(folder, prompts, params, **kwargs):
    outputs, engine = generate(folder, prompts, params, **kwargs)
    return tokens(outputs), engine.config


@pytest.mark.parametrize("arch", ARCHS)
def test_tp2_greedy_equals_tp1(arch, tp_checkpoint):
    folder = tp_checkpoint(arch)
    expected, _ = run(folder, PROMPTS, GREEDY)
    got, config = run(folder, PROMPTS, GREEDY, tensor_parallel_size=2)
    assert config.parallel.tensor_parallel_size == 2
    assert got == expected


def test_kv_heads_replicated_when_tp_exceeds_them(tp_checkpoint):
    """num_key_value_heads=1 at tp=2: each rank holds a replica of the one KV head."""
    folder = tp_checkpoint("LlamaForCausalLM", num_key_value_heads=1)
    expected, _ = run(folder, PROMPTS, GREEDY)
    got, _ = run(folder, PROMPTS, GREEDY, tensor_parallel_size=2)
    assert got == expected


def test_prefix_caching_chunked_prefill_and_preemption(tp_checkpoint):
    """Shared prefixes (cache hits), prompts chunked over steps, and a cache small enough to preempt."""
    folder = tp_checkpoint("Qwen2ForCausalLM")
    shared = "def helper(values):\n    total = 0\n    for value in values:\n        total += value\n"
    prompts = [shared + tail for tail in ("    return total", "    print(total)", "    yield total", "x")] * 2
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    kwargs = dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=32,
                  num_gpu_blocks_override=14, block_size=8, max_model_len=96, max_num_seqs=8)
    expected, _ = run(folder, prompts, params, **kwargs)
    llm = LLM(folder, device="cpu", tensor_parallel_size=2, **kwargs)
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        preemptions = llm.llm_engine.core.scheduler.num_preemptions_total
    finally:
        llm.llm_engine.shutdown()
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected
    assert preemptions > 0
    assert any(o.num_cached_tokens for o in outputs)


def test_random_sampling_equals_tp1(tp_checkpoint):
    """Seeded requests (their own generators) and unseeded ones (the engine seed, the same on every rank)."""
    folder = tp_checkpoint("LlamaForCausalLM")
    params = [SamplingParams(temperature=1.0, top_p=0.9, top_k=40, seed=7 + i, max_tokens=8) for i in range(3)]
    params += [SamplingParams(temperature=0.8, max_tokens=8) for _ in range(2)]
    expected, _ = run(folder, PROMPTS, params, seed=1234)
    got, _ = run(folder, PROMPTS, params, seed=1234, tensor_parallel_size=2)
    assert got == expected


def test_bad_tp_sizes_are_errors_naming_the_field(tp_checkpoint):
    folder = tp_checkpoint("LlamaForCausalLM")
    with pytest.raises(ValueError, match="tensor_parallel_size=3 .*num_attention_heads=4"):
        LLM(folder, device="cpu", tensor_parallel_size=3)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        LLM(folder, device="cpu", tensor_parallel_size=0)
    with pytest.raises(ValueError, match="distributed_executor_backend='uni'"):
        LLM(folder, device="cpu", tensor_parallel_size=2, distributed_executor_backend="uni")
    with pytest.raises(ValueError, match="external_launcher.*not supported yet"):
        LLM(folder, device="cpu", tensor_parallel_size=2, distributed_executor_backend="external_launcher")
