"""Penalties, static bias, bad words and user processors at the sampler level, against plain loops."""

import numpy as np
import pytest
import torch

from pagoda.sample import Sampler
from pagoda.sample.logits_processors import bad_words_bans, static_bias_vector
from pagoda.sample.penalties import PenaltyInputs, apply_penalties
from pagoda.sampling_params import SamplingParams
from pagoda.worker.sampling_inputs import build_sampling_metadata

V = 50


def _reference_penalties(row, prompt, output, presence, frequency, repetition):
    row = row.clone()
    for token in set(prompt) | set(output):
        row[token] = row[token] / repetition if row[token] > 0 else row[token] * repetition
    for token in set(output):
        row[token] -= frequency * output.count(token) + presence
    return row


def test_penalties_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    logits = torch.randn(5, V, generator=g) * 3
    rows = np.array([0, 2, 3])
    prompts = [rng.integers(0, V, 7).tolist(), rng.integers(0, V, 1).tolist(), rng.integers(0, V, 12).tolist()]
    outputs = [rng.integers(0, 10, 9).tolist(), [], rng.integers(0, V, 3).tolist()]
    settings = [(0.5, 1.0, 1.3), (-1.0, 0.0, 0.8), (2.0, -2.0, 1.0)]
    width = max(len(p) + len(o) for p, o in zip(prompts, outputs)) + 4
    tokens = np.full((3, width), 7, dtype=np.int64)  # columns past num_tokens hold junk
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        tokens[i, : len(p) + len(o)] = p + o
    inputs = PenaltyInputs.from_arrays(
        rows, tokens, np.array([len(p) for p in prompts]), np.array([len(p) + len(o) for p, o in zip(prompts, outputs)]),
        *[np.array(column, dtype=np.float32) for column in zip(*settings)], torch.device("cpu"))
    got = apply_penalties(logits, inputs)
    for i, row in enumerate(rows):
        want = _reference_penalties(logits[row], prompts[i], outputs[i], *settings[i])
        assert torch.allclose(got[row], want, atol=1e-5)
    for row in (1, 4):
        assert torch.equal(got[row], logits[row])


@pytest.mark.parametrize("seed", range(4))
def test_sparse_penalties_match_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    rows_total = 7
    logits = torch.from_numpy(rng.normal(0, 3, (rows_total, V)).astype(np.float32))
    rows = np.sort(rng.choice(rows_total, 5, replace=False))
    prompts, outputs = [], []
    for i in range(5):
        few = int(rng.integers(1, 6))  # few distinct ids: many repeats
        prompts.append(rng.integers(0, V, int(rng.integers(0, 9))).tolist() if i else [])
        outputs.append(rng.integers(0, few, int(rng.integers(0, 30))).tolist() if i != 1 else [])
    settings = [tuple(float(v) for v in rng.uniform([-2, -2, 0.5], [2, 2, 2])) for _ in range(5)]
    width = max(len(p) + len(o) for p, o in zip(prompts, outputs)) + 3
    tokens = rng.integers(0, V, (5, width))  # columns past num_tokens hold junk ids
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        tokens[i, : len(p) + len(o)] = p + o
    inputs = PenaltyInputs.from_arrays(
        rows, tokens, np.array([len(p) for p in prompts]), np.array([len(p) + len(o) for p, o in zip(prompts, outputs)]),
        *[np.array(column, dtype=np.float32) for column in zip(*settings)], torch.device("cpu"))
    before = logits.clone()
    got = apply_penalties(logits, inputs)
    assert torch.equal(logits, before)  # out of place
    for i, row in enumerate(rows):
        want = _reference_penalties(logits[row], prompts[i], outputs[i], *settings[i])
        torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5)
    for row in sorted(set(range(rows_total)) - set(rows.tolist())):
        assert torch.equal(got[row], logits[row])
    assert torch.equal(apply_penalties(logits, inputs), got)  # deterministic


def test_bad_words_bans():
    assert bad_words_bans([[5]], []) == [5]
    assert bad_words_bans([[1, 2, 3]], [9, 1, 2]) == [3]
    assert bad_words_bans([[1, 2, 3]], [1, 2, 9]) == []
    assert bad_words_bans([[1, 2, 3]], [2]) == []  # too short to match
    assert bad_words_bans([[4, 6], [6]], [4]) == [6, 6]


def test_static_bias_vector():
    assert static_bias_vector(SamplingParams(), V, "cpu") is None
    bias = static_bias_vector(SamplingParams(allowed_token_ids=[3, 4], logit_bias={4: 2.5, 9: 1000}), V, "cpu")
    assert bias[3] == 0 and bias[4] == 2.5 and bias[9] == float("-inf") and bias[0] == float("-inf")
    assert SamplingParams(logit_bias={"7": -500}).logit_bias == {7: -100.0}  # OpenAI's clamp, str keys


def test_sampler_applies_every_stage_to_greedy_rows():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, V, generator=g)
    before = logits.clone()
    top = logits.argmax(-1).tolist()
    calls = []

    def shift(prompt_ids, output_ids, row):
        calls.append((prompt_ids, output_ids))
        row[11] += 100.0
        return row

    params = [
        SamplingParams(temperature=0, allowed_token_ids=[2, 3]),
        SamplingParams(temperature=0, logit_bias={17: 50.0}),
        SamplingParams(temperature=0, logits_processors=[shift]),
        SamplingParams(temperature=0, repetition_penalty=1e6),
    ]
    params[1].bad_words_token_ids = [[8, 17]]  # the engine fills this from bad_words
    prompts = [[1], [1], [1, 2], [top[3]]]
    outputs = [[], [8], [5], []]
    meta = build_sampling_metadata(params, V, prompt_token_ids=prompts, output_token_ids=outputs)
    sampled = Sampler()(logits, meta).sampled_token_ids.tolist()
    assert sampled[0] in (2, 3)
    assert sampled[1] != 17  # biased up, but banned after 8
    assert sampled[2] == 11 and calls == [([1, 2], [5])]
    assert sampled[3] != top[3]  # the prompt's token is penalized away
    assert torch.equal(logits, before)


def test_plain_batches_take_the_fast_path():
    meta = build_sampling_metadata([SamplingParams(), SamplingParams(temperature=0)], V)
    assert meta.no_penalties and meta.bias is None and not meta.bad_words_masks and not meta.logits_processors


@pytest.mark.parametrize("bad", [lambda: 0, lambda a, b, c, d: 0])
def test_logits_processor_arity_is_checked(bad):
    with pytest.raises(ValueError, match="logits_processors"):
        SamplingParams(logits_processors=[bad])
