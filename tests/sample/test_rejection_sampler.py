"""Rejection sampler semantics: greedy prefix + argmax, output distributions equal to the target's
(with a check that wrong samplers fail the same bound), seeded rows, shape validation."""

import math

import pytest
import torch

from pagoda.sample import Sampler
from pagoda.sample.rejection_sampler import rejection_sample
from pagoda.sampling_params import SamplingParams
from pagoda.worker.sampling_inputs import build_sampling_metadata

V = 12
N = 40000  # identical rows per distribution check


def _meta(params, vocab=V):
    return build_sampling_metadata(params, vocab_size=vocab)


def _logits(rows, vocab=V, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


def _reference_probs(logits, temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0):
    """p of one position, written independently of sampler.py (float64): softmax(logits / T), then
    min-p, top-k, and top-p keeping each token whose more likely tokens hold less than top_p."""
    probs = torch.softmax(logits.double() / temperature, -1)
    keep = probs >= min_p * probs.max()
    if top_k > 0:
        keep &= probs >= probs.sort(descending=True).values[top_k - 1]
    probs = torch.where(keep, probs, 0.0)
    probs = probs / probs.sum()
    order = probs.argsort(descending=True)
    more_likely = probs[order].cumsum(0) - probs[order]
    keep = torch.zeros_like(keep)
    keep[order] = more_likely < top_p
    probs = torch.where(keep, probs, 0.0)
    return probs / probs.sum()


def _chi2_bound(df, z=3.719):
    """Wilson-Hilferty upper quantile of chi-square(df); z = 3.719 is P(chi2 > bound) ~ 1e-4."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _fits(counts, probs):
    """Whether token counts are a plausible sample of `probs` (chi-square test at ~1e-4)."""
    counts, probs = counts.double(), probs.double()
    expected = probs * counts.sum()
    support = expected > 0
    if counts[~support].sum() > 0:
        return False  # sampled a token of probability 0
    stat = (((counts[support] - expected[support]) ** 2) / expected[support]).sum().item()
    return stat < _chi2_bound(int(support.sum()) - 1)


def _sample_of(probs, n, seed):
    """Counts of an n-sample of `probs` (what a sampler with that output distribution would give)."""
    g = torch.Generator().manual_seed(seed)
    return torch.bincount(torch.multinomial(probs.float(), n, replacement=True, generator=g), minlength=V)


def _greedy_reference(logits, num_draft_tokens, drafts):
    argmax = Sampler()(logits, _meta([SamplingParams(temperature=0.0)] * logits.shape[0], logits.shape[1]))
    argmax = argmax.sampled_token_ids.tolist()
    expected, pos, d = [], 0, 0
    for k in num_draft_tokens:
        row = []
        for j in range(k):
            if drafts[d + j] != argmax[pos + j]:
                break
            row.append(drafts[d + j])
        row.append(argmax[pos + len(row)])
        expected.append(row + [-1] * (max(num_draft_tokens) + 1 - len(row)))
        pos, d = pos + k + 1, d + k
    return expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_is_longest_matching_prefix_then_argmax(dtype):
    ks = [3, 2, 0, 1, 4, 2]
    logits = _logits(sum(ks) + len(ks), vocab=16).to(dtype)
    argmax = logits.float().argmax(-1)
    logits[8, 3] = logits[8, 7] = logits[8].max() + 1  # row 4's first position: a tie, the lowest id wins
    argmax[8] = 3
    drafts = []
    pos = 0
    for row, k in enumerate(ks):
        mismatch = {0: None, 1: 1, 3: 0, 4: None, 5: 1}.get(row)  # the draft index that disagrees
        for j in range(k):
            target = int(argmax[pos + j])
            drafts.append((target + 1) % 16 if j == mismatch else target)
        pos += k + 1
    drafts[ks[0] + ks[1] + ks[2] + ks[3]] = 7  # row 4 proposes the tie's higher id: rejected
    draft_ids = torch.tensor(drafts)
    expected = _greedy_reference(logits, ks, drafts)
    out = rejection_sample(logits, ks, draft_ids, _meta([SamplingParams(temperature=0.0)] * len(ks), 16))
    assert out.dtype == torch.int64 and out.shape == (len(ks), max(ks) + 1)
    assert out.tolist() == expected
    assert [sum(t >= 0 for t in row) for row in expected] == [4, 2, 1, 1, 1, 2]
    # greedy rows mixed with random rows (and given draft probs, which greedy rows ignore) are unchanged
    params = [SamplingParams(temperature=0.0) if r % 2 == 0 else SamplingParams(temperature=0.8, top_k=4)
              for r in range(len(ks))]
    probs = torch.softmax(_logits(len(drafts), vocab=16, seed=1), -1)
    mixed = rejection_sample(logits, ks, draft_ids, _meta(params, 16), draft_probs=probs)
    assert mixed[0::2].tolist() == expected[0::2]


def _run(logits, params, draft_ids, draft_probs=None):
    """rejection_sample over N identical rows: `logits` [k+1, V], `draft_ids` [N, k]."""
    k = logits.shape[0] - 1
    probs = None if draft_probs is None else draft_probs.repeat(N, 1)
    return rejection_sample(logits.repeat(N, 1), [k] * N, draft_ids.reshape(-1), _meta([params] * N), probs)


def _draws(q, seed):
    """Draft ids [N, k] drawn from the draft distributions q [k, V]."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.multinomial(qj, N, replacement=True, generator=g) for qj in q], dim=1)


CASES = [  # (settings, drafts: "q" = drawn from a draft distribution, else the ranks in p_0, p_1 of fixed drafts)
    (dict(temperature=1.0), (1, 0)),
    (dict(temperature=0.7), "q"),
    (dict(temperature=1.3, top_k=6, top_p=0.9), "q"),
    (dict(temperature=0.8, min_p=0.05), (0, 2)),
    (dict(temperature=1.0, top_k=5), (1, 8)),  # the second draft lies outside the top-5: always rejected
]


@pytest.mark.parametrize("settings,drafts", CASES)
def test_outputs_follow_the_target_distribution(settings, drafts):
    torch.manual_seed(1)
    logits = _logits(3)  # k = 2 drafts and the bonus position
    p = [_reference_probs(row, **settings) for row in logits]
    if drafts == "q":
        q = torch.softmax(_logits(2, seed=5, scale=1.5), -1)
        draft_ids = _draws(q, seed=2)
        q_ref = q.double()
    else:
        q = None
        fixed = [int(p[j].argsort(descending=True)[rank]) for j, rank in enumerate(drafts)]
        draft_ids = torch.tensor(fixed).expand(N, 2)
        q_ref = torch.nn.functional.one_hot(torch.tensor(fixed), V).double()
    out = _run(logits, SamplingParams(**settings), draft_ids, q)

    assert ((out >= 0).sum(1) >= 1).all()
    reach = 1.0  # P(drafts 0..j-1 all accepted); accepting draft j has probability sum(min(p_j, q_j))
    for j in range(3):
        given = out[:, j] >= 0
        assert abs(given.double().mean().item() - reach) <= 5 * math.sqrt(reach * (1 - reach) / N) + 1e-12
        if reach * N > 1000:  # token j given that drafts 0..j-1 were accepted follows p_j
            assert _fits(torch.bincount(out[given, j], minlength=V), p[j]), f"output {j} does not follow p_{j}"
        if j < 2:
            reach *= torch.minimum(p[j], q_ref[j]).sum().item()
    assert drafts != (1, 8) or (out[:, 2] < 0).all()

    # The same check rejects wrong samplers. Their distributions at the first position, exactly:
    q0 = q_ref[0]
    accept = torch.where(q0 > 0, (p[0] / q0.clamp_min(1e-30)).clamp(max=1.0), 0.0)
    always_accept = q0  # the output is the draft
    recover_from_p = q0 * accept + (1 - (q0 * accept).sum()) * p[0]  # a rejection redraws from p, not max(p - q, 0)
    for wrong in (always_accept, recover_from_p):
        assert (wrong - p[0]).abs().sum() / 2 > 0.02
        assert not _fits(_sample_of(wrong, N, seed=3), p[0])
    n1 = int((out[:, 1] >= 0).sum())
    assert not _fits(_sample_of(q_ref[1], n1, seed=4), p[1])  # always accepting the second draft


def test_recovered_distribution_that_rounds_to_zero_falls_back_to_p():
    # draft probs 1.5 * p (not normalized): a rejection leaves max(p - q, 0) all zero
    logits = _logits(2)
    p = torch.softmax(logits, -1)
    draft_ids = _draws(p[:1], seed=6)
    out = _run(logits, SamplingParams(temperature=1.0), draft_ids, 1.5 * p[:1])
    rejected = out[:, 1] < 0
    assert 0.25 < rejected.double().mean() < 0.42  # accepted with probability 2/3
    assert _fits(torch.bincount(out[:, 0], minlength=V), p[0].double())


def _steps(logits_per_step, ks, params, q_per_step, drafts_per_step, steps):
    """Outputs of `steps` successive calls, passing the seeded rows' generators on."""
    generators, outs = None, []
    for s in range(steps):
        meta = build_sampling_metadata(params, vocab_size=16, generators=generators)
        generators = meta.generators
        outs.append(rejection_sample(logits_per_step[s], ks, drafts_per_step[s], meta, q_per_step[s]))
    return outs


def test_seeded_row_is_independent_of_its_batch():
    steps, k = 12, 4
    g = torch.Generator().manual_seed(0)
    row_logits = [torch.randn(k + 1, 16, generator=g) for _ in range(steps)]
    row_q = [torch.softmax(torch.randn(k, 16, generator=g), -1) for _ in range(steps)]
    row_drafts = [torch.multinomial(qs, 1, generator=g)[:, 0] for qs in row_q]
    seeded = SamplingParams(temperature=0.9, seed=7)

    alone = _steps(row_logits, [k], [seeded], row_q, row_drafts, steps)

    # the same row as row 1 of a batch, with unseeded, other-seeded, top-k and greedy neighbours
    ks = [2, k, 3, 0]
    params = [SamplingParams(temperature=1.0), seeded, SamplingParams(temperature=0.5, top_k=5, seed=8),
              SamplingParams(temperature=0.0)]
    logits, qs, drafts = [], [], []
    for s in range(steps):
        other = torch.randn(sum(ks) + len(ks), 16, generator=g)
        other_q = torch.softmax(torch.randn(sum(ks), 16, generator=g), -1)
        other_drafts = torch.multinomial(other_q, 1, generator=g)[:, 0]
        logits.append(torch.cat([other[:3], row_logits[s], other[3 + k + 1:]]))
        qs.append(torch.cat([other_q[:2], row_q[s], other_q[2 + k:]]))
        drafts.append(torch.cat([other_drafts[:2], row_drafts[s], other_drafts[2 + k:]]))
    torch.manual_seed(123)
    batched = _steps(logits, ks, params, qs, drafts, steps)

    for a, b in zip(alone, batched):
        assert a[0].tolist() == b[1, :k + 1].tolist()
    assert len({tuple(a[0].tolist()) for a in alone}) > 1
    # and a different seed gives a different sequence of outputs
    other_seed = _steps(row_logits, [k], [SamplingParams(temperature=0.9, seed=8)], row_q, row_drafts, steps)
    assert [a[0].tolist() for a in alone] != [o[0].tolist() for o in other_seed]
    again = _steps(row_logits, [k], [seeded], row_q, row_drafts, steps)
    assert [a[0].tolist() for a in alone] == [o[0].tolist() for o in again]


def test_rows_without_drafts_sample_their_bonus_position():
    logits = _logits(3, vocab=8)
    out = rejection_sample(logits, [0, 0, 0], torch.empty(0, dtype=torch.int64),
                           _meta([SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=1),
                                  SamplingParams(temperature=0.5, top_k=1)], vocab=8),
                           draft_probs=torch.empty(0, 8))
    assert out.shape == (3, 1)
    assert out[0, 0] == logits[0].argmax() and out[2, 0] == logits[2].argmax()
    assert 0 <= out[1, 0] < 8
    empty = rejection_sample(torch.empty(0, 8), [], torch.empty(0, dtype=torch.int64), _meta([], vocab=8))
    assert empty.shape == (0, 1)


def test_inputs_untouched():
    logits, q = _logits(5), torch.softmax(_logits(3, seed=1), -1)
    drafts = torch.tensor([1, 2, 3])
    before = (logits.clone(), q.clone(), drafts.clone())
    rejection_sample(logits, [2, 1], drafts, _meta([SamplingParams(temperature=0.7, top_p=0.8, min_p=0.1),
                                                    SamplingParams(temperature=0.0)]), draft_probs=q)
    assert all(torch.equal(a, b) for a, b in zip((logits, q, drafts), before))


def test_shape_errors():
    meta = _meta([SamplingParams(temperature=1.0)] * 2)
    logits, drafts = _logits(5), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="positions"):
        rejection_sample(_logits(6), [2, 1], drafts, meta)
    with pytest.raises(ValueError, match="draft_token_ids"):
        rejection_sample(logits, [2, 1], torch.tensor([1, 2]), meta)
    with pytest.raises(ValueError, match="draft_token_ids"):
        rejection_sample(logits, [2, 1], drafts.view(3, 1), meta)
    with pytest.raises(ValueError, match="draft_probs"):
        rejection_sample(logits, [2, 1], drafts, meta, draft_probs=torch.rand(3, V + 1))
    with pytest.raises(ValueError, match="draft_probs"):
        rejection_sample(logits, [2, 1], drafts, meta, draft_probs=torch.rand(2, V))
    with pytest.raises(ValueError, match="rows"):
        rejection_sample(logits, [2, 1, 0], drafts, meta)
    with pytest.raises(ValueError, match=">= 0"):
        rejection_sample(logits, [4, -1], drafts, meta)
    with pytest.raises(ValueError, match=r"\[T, V\]"):
        rejection_sample(logits.view(1, 5, V), [2, 1], drafts, meta)
