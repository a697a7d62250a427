"""Sampler semantics: greedy, temperature, top-k/top-p/min-p, seeds, min_tokens, raw logprobs."""

import pytest
import torch

from pagoda.sample import Sampler
from pagoda.sample.sampler import race_seeds
from pagoda.sampling_params import SamplingParams
from pagoda.worker.sampling_inputs import build_sampling_metadata

V = 64


def _meta(params, vocab=V, **kwargs):
    return build_sampling_metadata(params, vocab_size=vocab, **kwargs)


def _logits(rows, vocab=V, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_is_argmax(dtype):
    logits = _logits(8).to(dtype)
    logits[3, 5] = logits[3, 9] = logits[3].max() + 1  # tie: lowest id wins
    out = Sampler()(logits, _meta([SamplingParams(temperature=0.0)] * 8))
    assert out.sampled_token_ids.dtype == torch.int64
    assert torch.equal(out.sampled_token_ids, logits.float().argmax(-1))
    assert out.sampled_token_ids[3] == 5
    assert out.logprobs is None and out.logprob_token_ids is None and out.sampled_ranks is None


def test_top_k_1_and_tiny_top_p_and_min_p_1_are_greedy():
    logits = _logits(6)
    params = [SamplingParams(temperature=1.5, top_k=1), SamplingParams(temperature=0.9, top_p=1e-6),
              SamplingParams(temperature=2.0, min_p=1.0), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0, top_k=1, seed=3), SamplingParams(temperature=5.0, top_p=1e-6)]
    for _ in range(5):
        out = Sampler()(logits, _meta(params))
        assert torch.equal(out.sampled_token_ids, logits.argmax(-1))


def test_input_logits_untouched():
    logits = _logits(4)
    before = logits.clone()
    params = [SamplingParams(temperature=0.7, top_k=5, top_p=0.8, min_p=0.1, min_tokens=2, stop_token_ids=[1],
                             logprobs=3)] * 4
    Sampler()(logits, _meta(params))
    assert torch.equal(logits, before)


def _counts(logits_row, params, n=20000, seed=0):
    torch.manual_seed(seed)
    logits = logits_row.unsqueeze(0).expand(n, -1).contiguous()
    out = Sampler()(logits, _meta([params] * n, vocab=logits.shape[1]))
    return torch.bincount(out.sampled_token_ids, minlength=logits.shape[1]).double()


def _chi_square(counts, probs):
    expected = probs.double() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability 0"
    return (((counts[keep] - expected[keep]) ** 2) / expected[keep]).sum().item()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_distribution(temperature):
    row = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0])
    counts = _counts(row, SamplingParams(temperature=temperature))
    # 4 degrees of freedom: P(chi2 > 30) is about 5e-6
    assert _chi_square(counts, torch.softmax(row / temperature, -1)) < 30


def test_top_k_distribution():
    row = torch.tensor([0.2, 1.5, -0.3, 1.0, 0.0])
    counts = _counts(row, SamplingParams(temperature=0.8, top_k=2))
    expected = torch.zeros(5)
    expected[[1, 3]] = torch.softmax(row[[1, 3]] / 0.8, -1)
    assert _chi_square(counts, expected) < 30


def test_top_p_keeps_token_that_crosses_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    row = probs.log()
    counts = _counts(row, SamplingParams(temperature=1.0, top_p=0.6))
    expected = torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8  # 0.5 < 0.6, so 0.3 is kept too
    assert _chi_square(counts, expected) < 30
    counts = _counts(row, SamplingParams(temperature=1.0, top_p=0.45))
    assert counts[0] == counts.sum()


def test_min_p_distribution():
    probs = torch.tensor([0.4, 0.3, 0.19, 0.11])
    counts = _counts(probs.log(), SamplingParams(temperature=1.0, min_p=0.5))
    expected = torch.tensor([0.4, 0.3, 0.0, 0.0]) / 0.7  # threshold 0.2
    assert _chi_square(counts, expected) < 30


def test_mixed_batch_greedy_rows_exact():
    logits = _logits(10)
    params = [SamplingParams(temperature=0.0) if i % 2 else SamplingParams(temperature=1.0) for i in range(10)]
    meta = _meta(params)
    assert not meta.all_greedy and not meta.all_random
    out = Sampler()(logits, meta).sampled_token_ids
    assert torch.equal(out[1::2], logits[1::2].argmax(-1))


def _run_steps(batch_params, seeded_row, steps=6):
    """Tokens of `seeded_row` over several steps, generators persisting between steps."""
    logits = torch.zeros(len(batch_params), V)  # flat: every draw is decided by the RNG
    meta = _meta(batch_params)
    gens = meta.generators
    tokens = []
    for step in range(steps):
        meta = _meta(batch_params, generators=gens)
        tokens.append(Sampler()(logits + step * 0.01, meta).sampled_token_ids[seeded_row].item())
    return tokens


def test_seeded_rows_do_not_depend_on_batch():
    seeded = SamplingParams(temperature=1.0, seed=1234)
    torch.manual_seed(0)
    alone = _run_steps([seeded], 0)
    torch.manual_seed(1)
    batch_a = _run_steps([SamplingParams(temperature=1.0), seeded, SamplingParams(temperature=0.0)], 1)
    torch.manual_seed(2)
    batch_b = _run_steps([SamplingParams(temperature=0.7, seed=5), SamplingParams(temperature=1.0, top_k=3),
                          SamplingParams(temperature=1.0), seeded], 3)
    assert alone == batch_a == batch_b
    assert len(set(alone)) > 1  # really random across steps
    other = _run_steps([SamplingParams(temperature=1.0, seed=4321)], 0)
    assert other != alone


def test_raw_logprobs_and_ranks():
    logits = _logits(5, seed=3)
    params = [SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.5, top_k=4, logprobs=1),
              SamplingParams(temperature=1.3, top_p=0.7), SamplingParams(temperature=1.0, logprobs=0),
              SamplingParams(temperature=0.9, min_tokens=3, stop_token_ids=[7], logprobs=2)]
    meta = _meta(params)
    assert meta.max_num_logprobs == 3
    out = Sampler()(logits, meta)
    ref = torch.log_softmax(logits, -1)
    sampled = out.sampled_token_ids
    assert out.logprob_token_ids.shape == (5, 4) and out.logprobs.shape == (5, 4)
    assert out.logprobs.dtype == torch.float32
    assert torch.equal(out.logprob_token_ids[:, 0], sampled)
    torch.testing.assert_close(out.logprobs[:, 0], ref.gather(1, sampled[:, None])[:, 0])
    top = ref.topk(3, -1)
    assert torch.equal(out.logprob_token_ids[:, 1:], top.indices)
    torch.testing.assert_close(out.logprobs[:, 1:], top.values)
    for r in range(5):
        assert out.sampled_ranks[r].item() == 1 + int((ref[r] > ref[r, sampled[r]]).sum())
    assert out.sampled_ranks[0].item() == 1  # greedy row: the most likely token


def test_logprobs_from_half_logits_in_fp32():
    logits = _logits(3).to(torch.bfloat16)
    out = Sampler()(logits, _meta([SamplingParams(temperature=0.0, logprobs=2)] * 3))
    torch.testing.assert_close(out.logprobs[:, 1:], torch.log_softmax(logits.float(), -1).topk(2, -1).values)


def test_min_tokens_masks_eos_until_reached():
    eos = 4
    logits = _logits(2)
    logits[:, eos] = 100.0  # EOS would win every time
    logits[:, 9] = 50.0
    greedy = SamplingParams(temperature=0.0, min_tokens=2)
    random = SamplingParams(temperature=1.0, min_tokens=2, stop_token_ids=[9])
    greedy.all_stop_token_ids.add(eos)  # the engine adds EOS
    random.all_stop_token_ids.add(eos)
    meta = _meta([greedy, random], output_token_ids=[[3], []])
    assert meta.min_tokens_masks == {0: [eos], 1: [eos, 9]}
    for _ in range(20):
        out = Sampler()(logits, meta).sampled_token_ids
        assert out[0].item() == 9
        assert out[1].item() not in (eos, 9)
    done = _meta([greedy, random], output_token_ids=[[3, 4], [1, 2, 3, 4, 5]])
    assert done.min_tokens_masks == {}
    assert Sampler()(logits, done).sampled_token_ids.tolist() == [eos, eos]


def test_metadata_encodings():
    params = [SamplingParams(temperature=0.0, top_k=5), SamplingParams(top_k=-1),
              SamplingParams(top_k=V), SamplingParams(top_k=7, top_p=0.9, seed=1, logprobs=4)]
    meta = _meta(params)
    assert meta.temperature.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert meta.top_k.tolist() == [0, 0, 0, 7]  # greedy resets top_k; -1 and >= V mean disabled
    assert meta.top_k.dtype == torch.int64 and meta.temperature.dtype == torch.float32
    assert not meta.no_top_k and not meta.no_top_p and meta.no_min_p
    assert set(meta.generators) == {3} and meta.max_num_logprobs == 4
    plain = _meta([SamplingParams(), SamplingParams(temperature=0.0)])
    assert plain.no_top_k and plain.no_top_p and plain.max_num_logprobs is None
    with pytest.raises(ValueError, match="vocab_size"):
        build_sampling_metadata(params, vocab_size=0)
    with pytest.raises(ValueError, match="output_token_ids"):
        build_sampling_metadata(params, vocab_size=V, output_token_ids=[[]])
    with pytest.raises(ValueError, match="logits"):
        Sampler()(torch.zeros(2, V), meta)


def test_process_logits_converts_only_when_a_rule_applies():
    """No rule: the logits come back as given (no float32 copy); the torch path then samples exactly
    as it did on float32 logits. A rule (here a min_tokens ban): a new float32 tensor."""
    logits = _logits(4).to(torch.bfloat16)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=7),
              SamplingParams(temperature=1.2, seed=8, top_k=5), SamplingParams(temperature=0.5, seed=9, min_p=0.1)]
    assert Sampler.process_logits(logits, _meta(params)) is logits
    as_bf16 = Sampler()(logits, _meta(params)).sampled_token_ids
    as_fp32 = Sampler()(logits.float(), _meta(params)).sampled_token_ids  # the conversion the sampler used to do
    assert torch.equal(as_bf16, as_fp32)
    banned = SamplingParams(temperature=0.0, min_tokens=1, stop_token_ids=[3])
    processed = Sampler.process_logits(logits, _meta([banned] * 4))
    assert processed.dtype == torch.float32 and processed.data_ptr() != logits.data_ptr()
    assert torch.isinf(processed[:, 3]).all()


def test_race_seeds_one_draw_per_seeded_row():
    """The fused path's seeds: a seeded row's is the next draw of its own generator whatever the batch,
    and its generator advances by that one draw per step; an all-greedy batch draws nothing."""
    seeded = SamplingParams(temperature=1.0, seed=1234)
    mine = torch.Generator().manual_seed(1234)
    expected = [torch.empty(1, dtype=torch.int64).random_(0, 2**62, generator=mine).item() for _ in range(2)]
    for batch, row in (([seeded], 0), ([SamplingParams(temperature=1.0), SamplingParams(temperature=0.0), seeded], 2)):
        meta = _meta(batch)
        steps = [race_seeds(meta, "cpu") for _ in range(2)]
        assert [s[row].item() for s in steps] == expected
        assert all(s.dtype == torch.int64 and s.shape == (len(batch),) for s in steps)
    greedy = _meta([SamplingParams(temperature=0.0)] * 3)
    assert torch.equal(race_seeds(greedy, "cpu"), torch.zeros(3, dtype=torch.int64))


def test_fused_path_seeded_row_does_not_depend_on_batch():
    """What the sampler runs on CUDA without top-k/top-p/min-p (race_seeds, then the kernel; through
    Triton's interpreter when there is no GPU): a seeded row's tokens alone equal its tokens in a
    mixed batch, and greedy rows are exact."""
    from pagoda.kernels.sample import race_sample

    dev = "cuda" if torch.cuda.is_available() else "cpu"

    seeded = SamplingParams(temperature=1.0, seed=99)

    def tokens(batch, row, steps=4):
        meta = _meta(batch, device=dev)
        logits = torch.zeros(len(batch), V, device=dev)  # flat: every draw is decided by the RNG
        logits[:, 5] = 0.5
        return [race_sample(logits, meta.temperature, race_seeds(meta, dev))[row].item() for _ in range(steps)]

    alone = tokens([seeded], 0)
    torch.manual_seed(1)
    in_batch = tokens([SamplingParams(temperature=0.0), SamplingParams(temperature=0.7), seeded], 2)
    assert alone == in_batch and len(set(alone)) > 1
    logits = _logits(3).to(dev)
    meta = _meta([SamplingParams(temperature=0.0), SamplingParams(temperature=1.0), SamplingParams(temperature=0.0)],
                 device=dev)
    out = race_sample(logits, meta.temperature, race_seeds(meta, dev))
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()
