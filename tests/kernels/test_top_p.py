"""The top-p/min-p threshold kernel (kernels/top_p.py) against its sort-based torch reference: the kept sets
{logits / T >= threshold} are equal for top-p, min-p, both, neither and greedy rows, fp32/bf16 logits, ragged
vocab sizes, -inf entries; and the race with those thresholds draws only from the kept sets."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels.sample import race_sample, race_sample_ref, race_uniforms
from pagoda.kernels.top_p import top_p_thresholds, top_p_thresholds_ref


def _rows(vocab, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(8, vocab, generator=g) * 3).to(dtype)
    if vocab > 50:
        logits[5, ::2] = float("-inf")
    temperature = torch.tensor([0.8, 1.0, 1.3, 0.0, 0.7, 1.0, 2.0, 0.5])
    top_p = torch.tensor([0.95, 0.5, 1.0, 0.9, 0.2, 0.9, 0.999, 1e-6])
    min_p = torch.tensor([0.0, 0.05, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0])
    return logits, temperature, top_p, min_p


def _kept(logits, temperature, thresholds):
    scaled = logits.float() / torch.where(temperature > 0, temperature, torch.ones_like(temperature)).unsqueeze(1)
    return scaled >= thresholds.unsqueeze(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [7, 1000, 5000])
def test_kept_sets_equal_the_sorts(device, dtype, vocab):
    logits, temperature, top_p, min_p = _rows(vocab, dtype, seed=vocab)
    got = top_p_thresholds(*(t.to(device) for t in (logits, temperature, top_p, min_p))).cpu()
    want = top_p_thresholds_ref(logits, temperature, top_p, min_p)
    assert got.dtype == torch.float32
    assert torch.isinf(got[3]) and got[3] < 0  # greedy: no cut
    assert torch.equal(_kept(logits, temperature, got), _kept(logits, temperature, want))
    assert _kept(logits, temperature, got)[7].sum() == 1  # a tiny top-p keeps the most likely token only


def test_race_draws_only_inside_the_cut(device):
    logits, temperature, top_p, min_p = _rows(1000, torch.float32, seed=3)
    temperature[3] = 1.0
    thresholds = top_p_thresholds_ref(logits, temperature, top_p, min_p)
    kept = _kept(logits, temperature, thresholds)
    for seed in range(20):
        seeds = torch.randint(0, 2**62, (8,), generator=torch.Generator().manual_seed(seed)).to(device)
        got = race_sample(logits.to(device), temperature.to(device), seeds, thresholds=thresholds.to(device)).cpu()
        ref = race_sample_ref(logits, temperature, race_uniforms(seeds, 1000).cpu(), thresholds=thresholds)
        assert torch.equal(got, ref)
        assert kept[torch.arange(8), got].all()
