"""The sampler's fast paths against their references: the top-k path (sample/top_k_path.py) against
the sort over the vocabulary and the exact distribution, the fused path's top-p/min-p threshold and
the mixed top-k/fused batch (through Triton's interpreter on CPU), and the sampled tokens' raw
logprobs against log_softmax. (The sparse penalties' fuzz test is in test_logits_processing.py.)"""

import pytest
import torch

from pagoda.kernels import tuning
from pagoda.sample import Sampler, gather_logprobs
from pagoda.sample.logprobs import finish_raw_logprobs, raw_logprobs
from pagoda.sample.penalties import apply_penalties
from pagoda.sample.top_k_path import top_k_path_eligible
from pagoda.sampling_params import SamplingParams
from pagoda.worker.sampling_inputs import build_sampling_metadata

V = 64


def _meta(params, vocab=V, **kwargs):
    return build_sampling_metadata(params, vocab_size=vocab, **kwargs)


@pytest.fixture(params=["top_k_path", "sort_path"])
def path(request, monkeypatch):
    if request.param == "sort_path":
        monkeypatch.setattr(tuning, "SAMPLE_TOP_K_PATH_MAX_K", 0)
    return request.param


def test_eligibility_follows_the_random_rows():
    assert top_k_path_eligible(_meta([SamplingParams(temperature=1.0, top_k=5), SamplingParams(temperature=0.0)]))
    meta = _meta([SamplingParams(temperature=1.0, top_k=5), SamplingParams(temperature=0.5, top_k=9)])
    assert meta.max_top_k == 9 and meta.random_rows_top_k and top_k_path_eligible(meta)
    assert not top_k_path_eligible(_meta([SamplingParams(temperature=1.0, top_k=5), SamplingParams(temperature=1.0)]))
    assert not top_k_path_eligible(_meta([SamplingParams(temperature=1.0, top_k=V)]))  # k >= V is "no top-k"
    greedy_top_k = _meta([SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.2),
                          SamplingParams(temperature=1.0)])
    assert greedy_top_k.no_top_k and greedy_top_k.no_top_p and greedy_top_k.no_min_p  # a greedy row's cut never counts
    assert greedy_top_k.max_top_k == 0 and greedy_top_k.top_k_rows is None
    big = tuning.SAMPLE_TOP_K_PATH_MAX_K + 1
    assert not top_k_path_eligible(_meta([SamplingParams(temperature=1.0, top_k=big)], vocab=big + 10))


def _expected(row, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """The exact distribution: softmax(row / T), then min-p, top-k and top-p in vLLM's order."""
    probs = torch.softmax(row.double() / temperature, -1)
    keep = probs >= probs.max() * min_p
    if top_k:
        keep &= probs >= probs.topk(top_k).values[-1]
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    kept /= kept.sum()
    order = kept.argsort(descending=True)
    before = kept[order].cumsum(0) - kept[order]
    drop = torch.zeros_like(keep)
    drop[order] = before >= top_p
    drop[order[0]] = False
    kept = torch.where(drop, torch.zeros_like(kept), kept)
    return kept / kept.sum()


def _chi_square(counts, probs):
    expected = probs.double() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability 0"
    return (((counts[keep] - expected[keep]) ** 2) / expected[keep]).sum().item(), int(keep.sum())


@pytest.mark.parametrize("settings", [dict(temperature=0.7, top_k=6), dict(temperature=1.3, top_k=8, top_p=0.7),
                                      dict(temperature=1.0, top_k=10, min_p=0.2),
                                      dict(temperature=0.9, top_k=12, top_p=0.9, min_p=0.05)])
def test_distribution_on_both_paths(path, settings):
    row = torch.tensor([2.0, 1.5, 1.4, 1.0, 0.7, 0.5, 0.1, -0.2, -0.3, -1.0, -1.5, -2.0, -2.5, 0.3, 0.0, -0.7])
    n = 30000
    logits = row.unsqueeze(0).expand(n, -1).contiguous()
    torch.manual_seed(0)
    out = Sampler()(logits, _meta([SamplingParams(**settings)] * n, vocab=row.numel())).sampled_token_ids
    counts = torch.bincount(out, minlength=row.numel()).double()
    chi2, categories = _chi_square(counts, _expected(row, **settings))
    assert chi2 < 3 * categories + 30  # P(chi2 > 3 df + 30) < 1e-5 for these degrees of freedom


def test_per_row_k_in_one_batch():
    """Rows of one top-k batch with different k: each keeps only its own k (K = the largest)."""
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(2)) * 2
    params = [SamplingParams(temperature=5.0, top_k=1), SamplingParams(temperature=5.0, top_k=3),
              SamplingParams(temperature=5.0, top_k=20)]
    meta = _meta(params)
    assert top_k_path_eligible(meta)
    seen = [set() for _ in params]
    for _ in range(300):
        for r, token in enumerate(Sampler()(logits, meta).sampled_token_ids.tolist()):
            seen[r].add(token)
    top = logits.topk(20, -1).indices
    assert seen[0] == {top[0, 0].item()}
    assert seen[1] <= set(top[1, :3].tolist()) and len(seen[1]) == 3
    assert seen[2] <= set(top[2].tolist()) and len(seen[2]) > 10


def test_seeded_row_draws_the_same_on_both_paths():
    """A seeded row's q are the same values on both paths (gathered at the candidates), so its tokens
    stay the same when the batch moves between the top-k path and the sort path."""
    seeded = SamplingParams(temperature=1.0, top_k=6, seed=77)
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(5))

    def tokens(batch):
        meta = _meta(batch)
        gens, got = meta.generators, []
        for step in range(8):
            meta = _meta(batch, generators=gens)
            got.append(Sampler()(logits + step * 0.1, meta).sampled_token_ids[1].item())
        return got

    fast = tokens([SamplingParams(temperature=0.0), seeded])
    slow = tokens([SamplingParams(temperature=1.0), seeded])  # a row without top-k: the sort path
    assert fast == slow and len(set(fast)) > 1


def test_greedy_rows_in_a_top_k_batch_are_argmax():
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    params = [SamplingParams(temperature=0.0) if r % 2 else SamplingParams(temperature=1.0, top_k=4)
              for r in range(6)]
    out = Sampler()(logits, _meta(params)).sampled_token_ids
    assert torch.equal(out[1::2], logits[1::2].float().argmax(-1))
    assert all(t in logits[r].float().topk(4).indices.tolist() for r, t in enumerate(out.tolist()) if r % 2 == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_raw_logprobs_equal_log_softmax(dtype):
    logits = (torch.randn(9, 300, generator=torch.Generator().manual_seed(4)) * 4).to(dtype)
    sampled = torch.randint(0, 300, (9,), generator=torch.Generator().manual_seed(5))
    ids, values, ranks = finish_raw_logprobs(raw_logprobs(logits, 5), sampled)
    ref_ids, ref_values, ref_ranks = gather_logprobs(torch.log_softmax(logits.float(), -1), 5, sampled)
    assert torch.equal(ids, ref_ids) and torch.equal(ranks, ref_ranks)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=1e-5)
    ids0, values0, _ = finish_raw_logprobs(raw_logprobs(logits, 0), sampled)
    assert ids0.shape == (9, 1) and torch.equal(ids0[:, 0], sampled)


def test_w7_settings_end_to_end_match_the_sort_path(monkeypatch):
    """W7's settings (T 0.8, top-p 0.95, top-k 50, repetition 1.1, logprobs 5) on both paths: same
    logprobs, and greedy-equivalent rows (top_k = 1) give the penalized argmax on both."""
    vocab = 500
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(6)) * 3
    params = [SamplingParams(temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.1, logprobs=5)] * 3
    params.append(SamplingParams(temperature=0.8, top_k=1, repetition_penalty=1.1, logprobs=5))
    prompts = [[1, 2, 3], [4, 4], [int(logits[2].argmax())], [int(logits[3].argmax())]]
    meta = _meta(params, vocab=vocab, prompt_token_ids=prompts, output_token_ids=[[5], [], [6, 6], [7]])
    fast = Sampler()(logits, meta)
    monkeypatch.setattr(tuning, "SAMPLE_TOP_K_PATH_MAX_K", 0)
    slow = Sampler()(logits, meta)
    assert torch.equal(fast.logprob_token_ids[:, 1:], slow.logprob_token_ids[:, 1:])
    torch.testing.assert_close(fast.logprobs[:, 1:], slow.logprobs[:, 1:])
    penalized = apply_penalties(logits, meta.penalties)
    assert fast.sampled_token_ids[3] == slow.sampled_token_ids[3] == penalized[3].argmax()



def test_fused_path_cuts_top_p_and_min_p_rows_by_threshold():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    """The fused path (Triton; here through its interpreter on CPU tensors) with top-p and min-p rows: each
    row's draw is the race among its kept set {logits / T >= threshold}, the set the sort would keep."""
    from pagoda.kernels.sample import race_sample_ref, race_uniforms
    from pagoda.kernels.top_p import top_p_thresholds_ref
    from pagoda.sample.sampler import fused_sample, fused_sampling_eligible, race_seeds

    logits = (torch.randn(6, 300, generator=torch.Generator().manual_seed(8)) * 3).to(device)
    params = [SamplingParams(temperature=0.8, top_p=0.9), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0, min_p=0.2), SamplingParams(temperature=1.2),
              SamplingParams(temperature=0.7, top_p=0.5, min_p=0.05, seed=4),
              SamplingParams(temperature=1.0, top_p=1e-6)]
    meta = _meta(params, vocab=300, device=device)
    assert fused_sampling_eligible(meta) == tuning.FUSED_SAMPLING
    for step in range(3):
        seeds = race_seeds(meta, device)
        got = fused_sample(logits, meta, seeds)
        thresholds = top_p_thresholds_ref(logits, meta.temperature, meta.top_p, meta.min_p)
        want = race_sample_ref(logits, meta.temperature, race_uniforms(seeds, 300), thresholds)
        assert torch.equal(got, want)
        assert got[1] == logits[1].argmax() and got[5] == logits[5].argmax()


def test_mixed_batch_samples_each_row_as_its_own_kind_would():
    """A batch where only some random rows have a top-k (CUDA: `mixed_sample`; here through Triton's
    interpreter): the top-k rows get the top-k path's token, the others the fused path's, each with its
    own q, so equal to running the two kinds of rows as separate batches."""
    from pagoda.sample.sampler import fused_sample, mixed_sample, mixed_sampling_eligible, race_seeds
    from pagoda.sample.top_k_path import sample_top_k

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = (torch.randn(5, 400, generator=torch.Generator().manual_seed(9)) * 3).to(device)
    params = [SamplingParams(temperature=0.8, top_k=20, top_p=0.9), SamplingParams(temperature=1.0, top_p=0.8),
              SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, top_k=5, seed=11),
              SamplingParams(temperature=1.1)]
    meta = _meta(params, vocab=400, device=device)
    assert meta.top_k_rows.tolist() == [0, 3] and not top_k_path_eligible(meta)
    assert mixed_sampling_eligible(meta) == tuning.FUSED_SAMPLING
    assert _meta(params[:1] + params[2:3], vocab=400).top_k_rows is None  # not mixed: the top-k path alone
    for _ in range(3):
        seeds = race_seeds(meta, device)
        got = mixed_sample(logits, meta, seeds)
        plain = fused_sample(logits, meta, seeds)
        assert torch.equal(got[[1, 2, 4]], plain[[1, 2, 4]])
        alone = _meta([params[0], params[3]], vocab=400, device=device)
        want = sample_top_k(logits[[0, 3]], alone, seeds[[0, 3]])
        assert torch.equal(got[[0, 3]], want)
        assert got[2] == logits[2].argmax()
        assert got[3] in logits[3].topk(5).indices
