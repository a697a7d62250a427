"""Speculative decoding under async scheduling (drafts proposed on the device, the next step scheduled while
the verify step runs): greedy outputs are token-identical to decoding without speculation.

The n-gram lookup on the device (method "ngram_gpu") must draft exactly what the host lookup drafts
from the true tokens. The device-side oracle (spec_decode/oracle_proposer.py, what `pagoda bench latency --spec-oracle` measures)
replays a run without speculation; `noise` corrupts drafts at fixed positions, so rejections happen at every
draft position and the next step's positions, slots and input tokens must be corrected on the device from
the accepted counts. The draft model runs this path too (tests/engine/test_spec_decode_draft.py).
"""

import numpy as np
import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine_args import EngineArgs
from pagoda.spec_decode.oracle_proposer import DeviceOracle
from pagoda.worker.step_output import VerifiedTokens
from tests.engine.conftest import ARCHS, PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


class NoisyDeviceOracle(DeviceOracle):
    """The device oracle with drafts made wrong (+1) at a fixed ~30 % of absolute positions."""

    def propose(self, rows, last, position, draft_ids) -> None:
        super().propose(rows, last, position, draft_ids)
        from pagoda.worker.input_batch import to_device

        drafted_at = position[:, None] + 1 + torch.arange(self.k, device=position.device)
        wrong = (drafted_at * 7919 % 10) < 3
        rows_dev = to_device(rows, draft_ids.device)
        draft_ids[rows_dev] = draft_ids[rows_dev] + wrong.to(torch.int64)


def _llm(folder, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)
    return LLM(folder, dtype="float32", max_model_len=256, **kwargs)


def _oracle_llm(folder, outputs, noise=False, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)
    engine_args = EngineArgs.from_kwargs(model=folder, dtype="float32", max_model_len=256, speculative_config=NGRAM,
                                         **kwargs)
    config = engine_args.create_config()
    config.speculative.oracle = True
    config.scheduler.async_scheduling = True
    llm = LLM.from_engine(engine_args, LLMEngine(config))
    spec = llm.llm_engine.core.executor.worker.runner.spec
    assert spec.on_device and isinstance(spec.device_proposer, DeviceOracle)
    if noise:
        spec.device_proposer = NoisyDeviceOracle(spec.num_speculative_tokens, spec.runner)
    spec.device_proposer.record([list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outputs], key_len=1)
    return llm


def _tokens(llm, params=GREEDY, prompts=PROMPTS):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def reference_outputs(llama_dir):
    return _llm(llama_dir).generate(PROMPTS, GREEDY, use_tqdm=False)


@pytest.fixture(scope="module")
def reference(reference_outputs):
    return [o.outputs[0].token_ids for o in reference_outputs]


@pytest.fixture
def corrections(monkeypatch):
    """Counts the requests whose next step was prepared while their verify step was still in flight."""
    counted = {"rows": 0}
    original = VerifiedTokens.sources

    def sources(self, rows, batch):
        found = original(self, rows, batch)
        counted["rows"] += int((found >= 0).sum())
        return found

    monkeypatch.setattr(VerifiedTokens, "sources", sources)
    return counted


@pytest.mark.parametrize("arch", ARCHS)
def test_async_greedy_matches_no_speculation(checkpoint, arch, corrections):
    folder = checkpoint(arch)
    plain = _llm(folder)
    expected = plain.generate(PROMPTS, GREEDY, use_tqdm=False)
    exact = _oracle_llm(folder, expected)
    assert _tokens(exact) == [o.outputs[0].token_ids for o in expected]
    stats = exact.llm_engine.stats()
    assert stats["spec_decode_num_accepted_tokens"] == stats["spec_decode_num_draft_tokens"] > 0
    noisy = _oracle_llm(folder, expected, noise=True)
    assert _tokens(noisy) == [o.outputs[0].token_ids for o in expected]
    stats = noisy.llm_engine.stats()
    assert 0 < stats["spec_decode_num_accepted_tokens"] < stats["spec_decode_num_draft_tokens"]
    assert all(count > 0 for count in stats["spec_decode_num_accepted_tokens_per_pos"])
    assert corrections["rows"] > 0  # steps really were prepared while verify steps ran


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(enable_prefix_caching=True, block_size=8),
        dict(enable_prefix_caching=True, block_size=8, max_num_batched_tokens=7),  # chunks; drafts capped by budget
        dict(enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=40),  # forced preemption
        dict(block_size=8, max_num_seqs=3),
    ],
    ids=["prefix-cache", "chunked-7", "preemption", "max-seqs-3"],
)
def test_async_greedy_invariant_under_engine_settings(llama_dir, reference_outputs, reference, kwargs):
    llm = _oracle_llm(llama_dir, reference_outputs, noise=True, **kwargs)
    prompts = PROMPTS + PROMPTS[:3]
    assert _tokens(llm, prompts=prompts) == reference + reference[:3]
    stats = llm.llm_engine.stats()
    assert stats["spec_decode_num_accepted_tokens"] > 0
    if "num_gpu_blocks_override" in kwargs:
        assert stats["num_preemptions"] > 0
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_async_stops_and_logprobs_inside_accepted_runs(llama_dir):
    plain = _llm(llama_dir)
    whole = plain.generate(PROMPTS, GREEDY, use_tqdm=False)
    full = [o.outputs[0] for o in whole]
    tokenizer = plain.get_tokenizer()
    stop_ids = sorted({o.token_ids[6] for o in full})
    stop_strings = sorted({tokenizer.decode(o.token_ids[5:7]).strip() for o in full} - {""})[:3]
    cases = [
        SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop_token_ids=stop_ids),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop_strings, logprobs=1),
    ]
    spec = _oracle_llm(llama_dir, whole)
    for params in cases:
        want = [o.outputs[0] for o in plain.generate(PROMPTS, params, use_tqdm=False)]
        got = [o.outputs[0] for o in spec.generate(PROMPTS, params, use_tqdm=False)]
        for g, w in zip(got, want):
            assert g.token_ids == w.token_ids and g.text == w.text
            assert (g.finish_reason, g.stop_reason) == (w.finish_reason, w.stop_reason)
            if w.logprobs is not None:
                assert len(g.logprobs) == len(w.logprobs)
                for a, b in zip(g.logprobs, w.logprobs):
                    assert a.keys() == b.keys()
                    for token in a:
                        assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-4)
    assert spec.llm_engine.stats()["spec_decode_num_accepted_tokens"] > 0


def test_async_mixed_batch_seeded_sampling_and_penalties(llama_dir, reference_outputs, reference):
    """Greedy, seeded random and penalized requests in one async speculative batch: greedy as without
    speculation, penalized ones (no drafts: their sampling reads host history) too, seeded ones reproducible."""
    seeded = [SamplingParams(temperature=0.9, top_p=0.9, seed=i, max_tokens=24, ignore_eos=True)
              for i in range(len(PROMPTS))]
    penalized = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, repetition_penalty=1.2)
                 for _ in PROMPTS]
    plain_penalized = _tokens(_llm(llama_dir), penalized)
    spec = _oracle_llm(llama_dir, reference_outputs, noise=True)
    outs = spec.generate(PROMPTS * 3, [GREEDY] * len(PROMPTS) + seeded + penalized, use_tqdm=False)
    n = len(PROMPTS)
    assert [o.outputs[0].token_ids for o in outs[:n]] == reference
    assert [o.outputs[0].token_ids for o in outs[2 * n:]] == plain_penalized
    again = spec.generate(PROMPTS, seeded, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs[n:2 * n]]
    assert all(len(o.outputs[0].token_ids) == 24 for o in outs)


@pytest.mark.parametrize("kwargs", [dict(), dict(enable_prefix_caching=True, block_size=8, max_num_batched_tokens=7),
                                    dict(enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=40)],
                         ids=["default", "chunked-7", "preemption"])
def test_padded_verify_steps_change_nothing(llama_dir, reference_outputs, reference, monkeypatch, kwargs):
    """Steps whose requests carry different numbers of drafts are padded to k + 1 query tokens (what lets them
    replay a CUDA graph on a GPU); forced here on the CPU. Padding tokens write no KV and are never sampled."""
    from pagoda.worker.model_runner import ModelRunner

    padded = {"steps": 0}
    original = ModelRunner._graph_query_len

    def graph_query_len(self, rows, starts, counts):
        q = original(self, rows, starts, counts)
        padded["steps"] += q is not None
        return q

    monkeypatch.setattr(ModelRunner, "_graph_query_len", graph_query_len)
    llm = _oracle_llm(llama_dir, reference_outputs, noise=True, **kwargs)
    llm.llm_engine.core.executor.worker.runner.pad_query_lens = (1, 5)
    prompts = PROMPTS + PROMPTS[:3]
    assert _tokens(llm, prompts=prompts) == reference + reference[:3]
    assert padded["steps"] > 0
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


NGRAM_GPU = {"method": "ngram_gpu", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
COPY_HEAVY = ["a b c d a b c d a b c d a b", "x = 1\nx = 1\nx = 1\nx = 1\n", "def f(): return f(); def f(): return"]


@pytest.mark.parametrize("arch", ARCHS)
def test_ngram_gpu_keeps_async_scheduling_and_the_tokens(checkpoint, arch, corrections):
    folder = checkpoint(arch)
    prompts = PROMPTS + COPY_HEAVY
    expected = _tokens(_llm(folder), prompts=prompts)
    llm = _llm(folder, speculative_config=NGRAM_GPU)
    assert llm.llm_engine.config.scheduler.async_scheduling is True
    assert _tokens(llm, prompts=prompts) == expected
    stats = llm.llm_engine.stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    assert corrections["rows"] > 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(enable_prefix_caching=True, block_size=8, max_num_batched_tokens=7),
     dict(enable_prefix_caching=False, block_size=8, num_gpu_blocks_override=40), dict(async_scheduling=False)],
    ids=["chunked-7", "preemption", "async-off"],
)
def test_ngram_gpu_under_engine_settings(llama_dir, kwargs):
    prompts = PROMPTS + COPY_HEAVY + COPY_HEAVY
    expected = _tokens(_llm(llama_dir), prompts=prompts)
    llm = _llm(llama_dir, speculative_config=NGRAM_GPU, **kwargs)
    assert _tokens(llm, prompts=prompts) == expected
    stats = llm.llm_engine.stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    if "num_gpu_blocks_override" in kwargs:
        assert stats["num_preemptions"] > 0


def test_ngram_gpu_drafts_what_the_host_lookup_drafts_from_the_true_tokens(llama_dir, monkeypatch):
    """At every proposal the device history of each request is its prompt plus exactly the tokens it has
    generated so far (the reference greedy run's), and the drafts are the host proposer's on those tokens."""
    from pagoda.spec_decode.ngram_gpu import DeviceNgramProposer
    from pagoda.spec_decode.ngram_proposer import NgramProposer

    prompts = PROMPTS + COPY_HEAVY
    plain = _llm(llama_dir)
    whole = plain.generate(prompts, GREEDY, use_tqdm=False)
    full = {tuple(o.prompt_token_ids): list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in whole}
    host = NgramProposer(4, 1, 3)
    checked = {"rows": 0, "drafted": 0}
    original = DeviceNgramProposer.propose

    def propose(self, rows, last, position, draft_ids):
        original(self, rows, last, position, draft_ids)
        batch = self.runner.batch
        for j, row in enumerate(rows.tolist()):
            length = int(position[j]) + 1
            tokens = full[tuple(batch.token_ids[row, : batch.num_prompt_tokens[row]].tolist())][:length]
            assert self.history[row, :length].tolist() == tokens
            want = host.propose(np.array(tokens))
            assert draft_ids[row, : len(want)].tolist() == want
            checked["rows"] += 1
            checked["drafted"] += bool(want)

    monkeypatch.setattr(DeviceNgramProposer, "propose", propose)
    llm = _llm(llama_dir, speculative_config=NGRAM_GPU, enable_prefix_caching=False, block_size=8,
               num_gpu_blocks_override=40)
    assert _tokens(llm, prompts=prompts) == [full[tuple(o.prompt_token_ids)][len(o.prompt_token_ids):] for o in whole]
    assert checked["rows"] > 0 and checked["drafted"] > 0
