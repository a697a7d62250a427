"""Speculative decoding end to end: greedy outputs are token-identical to decoding without it.

Random tiny weights give the n-gram proposer drafts that are almost never accepted, so acceptance is
exercised with oracle proposers that replay the tokens a run without speculation produced: exactly
(acceptance 1: stop tokens, max_tokens, stop strings and logprobs inside an accepted run), or with
some tokens corrupted (rejections at every draft position). The n-gram proposer itself runs in the
server test and below, where its drafts must be verified and change nothing.
"""

import numpy as np
import pytest
import torch

from pagoda import LLM, SamplingParams
from tests.engine.conftest import ARCHS, PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
COPY_HEAVY = ["a b c d a b c d a b c d a b", "x = 1\nx = 1\nx = 1\nx = 1\n", "def f(): return f(); def f(): return"]


def _prompts():
    return PROMPTS + COPY_HEAVY


def _llm(folder, **kwargs):
    # A small KV cache, so that on a GPU the engines of one test process fit side by side.
    kwargs.setdefault("kv_cache_memory_bytes", 64 << 20)
    return LLM(folder, dtype="float32", max_model_len=256, **kwargs)


def _generate(llm, params=GREEDY, prompts=None, whole=False):
    outs = llm.generate(prompts or _prompts(), params, use_tqdm=False)
    return outs if whole else [o.outputs[0] for o in outs]


def _spec_stats(llm):
    return llm.llm_engine.stats()


@pytest.fixture(scope="module")
def reference_outputs(llama_dir):
    return _generate(_llm(llama_dir), whole=True)


@pytest.fixture(scope="module")
def reference(reference_outputs):
    return [o.outputs[0].token_ids for o in reference_outputs]


class OracleProposer:
    """Proposes the tokens a run without speculation produced after the same prefix; with `noise`, each
    proposed token is replaced by a wrong one with that probability (deterministic per prefix length)."""

    def __init__(self, sequences: list[list[int]], k: int, noise: float = 0.0) -> None:
        self.sequences, self.k, self.noise = sequences, k, noise

    def propose(self, token_ids: np.ndarray, max_num_tokens: int | None = None) -> list[int]:
        known = token_ids.tolist()
        for seq in self.sequences:
            if seq[: len(known)] == known:
                drafts = seq[len(known): len(known) + self.k]
                rng = np.random.default_rng(len(known))
                return [t + 1 if rng.random() < self.noise else t for t in drafts]
        return []


def _with_oracle(llm, outs, noise=0.0):
    sequences = [list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outs]
    llm.llm_engine.core.executor.worker.runner.spec.proposer = OracleProposer(sequences, 4, noise)
    return llm


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_no_speculation(checkpoint, arch):
    folder = checkpoint(arch)
    expected = _generate(_llm(folder), whole=True)
    ngram = _llm(folder, speculative_config=NGRAM)
    assert [o.token_ids for o in _generate(ngram)] == [o.outputs[0].token_ids for o in expected]
    assert _spec_stats(ngram)["spec_decode_num_drafts"] > 0
    noisy = _with_oracle(_llm(folder, speculative_config=NGRAM), expected, noise=0.3)
    assert [o.token_ids for o in _generate(noisy)] == [o.outputs[0].token_ids for o in expected]
    stats = _spec_stats(noisy)
    assert 0 < stats["spec_decode_num_accepted_tokens"] < stats["spec_decode_num_draft_tokens"]
    assert all(count > 0 for count in stats["spec_decode_num_accepted_tokens_per_pos"])


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
def test_greedy_invariant_under_engine_settings(llama_dir, reference_outputs, reference, kwargs):
    llm = _with_oracle(_llm(llama_dir, speculative_config=NGRAM, **kwargs), reference_outputs, noise=0.3)
    assert [o.token_ids for o in _generate(llm)] == reference
    stats = _spec_stats(llm)
    assert stats["spec_decode_num_accepted_tokens"] > 0
    if "num_gpu_blocks_override" in kwargs:
        assert stats["num_preemptions"] > 0
    pool = llm.llm_engine.core.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_oracle_drafts_are_all_accepted(llama_dir, reference_outputs, reference):
    llm = _with_oracle(_llm(llama_dir, speculative_config=NGRAM), reference_outputs)
    assert [o.token_ids for o in _generate(llm)] == reference
    stats = _spec_stats(llm)
    assert stats["spec_decode_num_accepted_tokens"] == stats["spec_decode_num_draft_tokens"] > 0
    per_pos = stats["spec_decode_num_accepted_tokens_per_pos"]
    assert len(per_pos) == 4 and sum(per_pos) == stats["spec_decode_num_accepted_tokens"]


def _same_completion(got, want):
    assert got.token_ids == want.token_ids
    assert got.text == want.text
    assert (got.finish_reason, got.stop_reason) == (want.finish_reason, want.stop_reason)
    if want.logprobs is not None:
        assert len(got.logprobs) == len(want.logprobs)
        for a, b in zip(got.logprobs, want.logprobs):
            assert a.keys() == b.keys()
            for token in a:
                assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-4)
                assert a[token].rank == b[token].rank
        assert got.cumulative_logprob == pytest.approx(want.cumulative_logprob, abs=1e-3)


def test_stops_inside_an_accepted_run_end_where_plain_decoding_ends(llama_dir):
    prompts = _prompts()
    plain = _llm(llama_dir)
    whole = _generate(plain, prompts=prompts, whole=True)
    full = [o.outputs[0] for o in whole]
    tokenizer = plain.get_tokenizer()
    # A stop id and a stop string that occur a few tokens into each output, and a max_tokens that is
    # not a multiple of k + 1: each ends a request inside a run of accepted drafts.
    stop_ids = sorted({o.token_ids[6] for o in full})
    stop_strings = sorted({tokenizer.decode(o.token_ids[5:7]).strip() for o in full} - {""})[:3]
    cases = [
        SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop_token_ids=stop_ids),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop_strings, logprobs=1),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop_strings,
                       include_stop_str_in_output=True),
    ]
    spec = _with_oracle(_llm(llama_dir, speculative_config=NGRAM), whole)
    for params in cases:
        want = _generate(plain, params, prompts)
        got = _generate(spec, params, prompts)
        for g, w in zip(got, want):
            _same_completion(g, w)
    assert _spec_stats(spec)["spec_decode_num_accepted_tokens"] > 0


def test_requests_speculation_cannot_serve_exactly_decode_without_it(llama_dir):
    """Penalties, bad words, min_tokens, logit_bias: no drafts, and the same tokens as without speculation
    (seeded random sampling included, since such a request samples exactly as it would without it)."""
    cases = [
        SamplingParams(temperature=0.8, seed=3, max_tokens=16, repetition_penalty=1.3),
        SamplingParams(temperature=0.0, max_tokens=16, presence_penalty=0.5, frequency_penalty=0.5),
        SamplingParams(temperature=0.0, max_tokens=16, min_tokens=10, stop_token_ids=[5, 6]),
        SamplingParams(temperature=0.7, seed=11, max_tokens=16, logit_bias={7: 3.0, 9: -2.0}),
    ]
    prompts = COPY_HEAVY
    plain = _llm(llama_dir)
    spec = _llm(llama_dir, speculative_config=NGRAM)
    for params in cases:
        assert [o.token_ids for o in _generate(spec, params, prompts)] == \
            [o.token_ids for o in _generate(plain, params, prompts)]
    assert _spec_stats(spec)["spec_decode_num_drafts"] == 0


def test_mixed_batch_and_seeded_sampling_is_reproducible(llama_dir, reference):
    prompts = _prompts()
    greedy = [GREEDY] * len(prompts)
    seeded = [SamplingParams(temperature=0.9, top_p=0.9, seed=i, max_tokens=24, ignore_eos=True)
              for i in range(len(prompts))]
    penalized = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, repetition_penalty=1.2)
                 for _ in prompts]
    plain_penalized = [o.outputs[0].token_ids for o in _llm(llama_dir).generate(prompts, penalized, use_tqdm=False)]
    spec = _llm(llama_dir, speculative_config=NGRAM)
    outs = spec.generate(prompts * 3, greedy + seeded + penalized, use_tqdm=False)
    n = len(prompts)
    assert [o.outputs[0].token_ids for o in outs[:n]] == reference
    assert [o.outputs[0].token_ids for o in outs[2 * n:]] == plain_penalized
    again = spec.generate(prompts, seeded, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs[n:2 * n]]
    assert all(len(o.outputs[0].token_ids) == 24 for o in outs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_verify_steps_replay_cuda_graphs_and_match_eager(llama_dir, reference_outputs, reference):
    graphs = _with_oracle(_llm(llama_dir, speculative_config=NGRAM), reference_outputs)
    eager = _with_oracle(_llm(llama_dir, speculative_config=NGRAM, enforce_eager=True), reference_outputs)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=3)
    got, want = _generate(graphs, params), _generate(eager, params)
    for g, w in zip(got, want):
        _same_completion(g, w)
    assert [o.token_ids for o in got] == reference
    replays = graphs.llm_engine.core.executor.worker.runner.cuda_graphs.num_replays
    assert replays[NGRAM["num_speculative_tokens"] + 1] > 0, replays


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_padded_verify_steps_replay_cuda_graphs_and_match_eager(llama_dir, monkeypatch):
    """The n-gram lookup drafts different numbers of tokens per request (or none): such steps are padded to
    k + 1 query tokens and replay that graph; tokens and logprobs equal eager steps and no speculation."""
    from pagoda.worker.model_runner import ModelRunner

    padded = {"steps": 0}
    original = ModelRunner._graph_query_len

    def graph_query_len(self, rows, starts, counts):
        q = original(self, rows, starts, counts)
        padded["steps"] += q is not None
        return q

    monkeypatch.setattr(ModelRunner, "_graph_query_len", graph_query_len)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=3)
    plain = [o.token_ids for o in _generate(_llm(llama_dir), params)]
    graphs = _llm(llama_dir, speculative_config=NGRAM)
    got = _generate(graphs, params)
    assert padded["steps"] > 0
    want = _generate(_llm(llama_dir, speculative_config=NGRAM, enforce_eager=True), params)
    for g, w in zip(got, want):
        _same_completion(g, w)
    assert [o.token_ids for o in got] == plain
    replays = graphs.llm_engine.core.executor.worker.runner.cuda_graphs.num_replays
    assert replays[NGRAM["num_speculative_tokens"] + 1] > 0, replays


def test_prompt_logprobs_n_and_beam_search_unchanged_by_speculation(llama_dir, reference_outputs):
    from pagoda.sampling_params import BeamSearchParams

    plain = _llm(llama_dir)
    spec = _with_oracle(_llm(llama_dir, speculative_config=NGRAM), reference_outputs, noise=0.3)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, prompt_logprobs=2, n=2)
    want, got = plain.generate(PROMPTS, params, use_tqdm=False), spec.generate(PROMPTS, params, use_tqdm=False)
    for g, w in zip(got, want):
        assert [c.token_ids for c in g.outputs] == [c.token_ids for c in w.outputs]
        assert len(g.prompt_logprobs) == len(w.prompt_logprobs)
        for a, b in zip(g.prompt_logprobs[1:], w.prompt_logprobs[1:]):
            assert a.keys() == b.keys()
    beams = BeamSearchParams(beam_width=2, max_tokens=6)
    prompts = [{"prompt": p} for p in PROMPTS[:3]]
    assert [[s.tokens for s in r.sequences] for r in spec.beam_search(prompts, beams)] == \
        [[s.tokens for s in r.sequences] for r in plain.beam_search(prompts, beams)]


def test_disable_by_batch_size_stops_proposing_while_the_batch_is_large(llama_dir, reference_outputs, reference):
    config = {**NGRAM, "disable_by_batch_size": 4}
    llm = _with_oracle(_llm(llama_dir, speculative_config=config), reference_outputs)
    assert [o.token_ids for o in _generate(llm)] == reference
    drafted = _spec_stats(llm)["spec_decode_num_drafts"]
    full = _with_oracle(_llm(llama_dir, speculative_config=NGRAM), reference_outputs)
    _generate(full)
    # drafts only once fewer than 4 of the 11 requests run (they finish together, so barely)
    assert drafted < _spec_stats(full)["spec_decode_num_drafts"]
