"""The fused sampling kernel vs. its torch reference (fed the kernel's own Philox uniforms): greedy and
random rows, fp32/bf16 logits, forced vocab splits with ragged ranges, banned and all-banned rows,
ties across tile and split boundaries, independence from the split count and the other rows, and the
distribution of the draws; plus the split heuristic."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import tuning
from pagoda.kernels.sample import race_sample, race_sample_ref, race_uniforms, race_uniforms_at

BLOCK = tuning.SAMPLE_BLOCK_V


def _seeds(rows: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (rows,), generator=g, dtype=torch.int64).to(device)


def _logits(rows: int, vocab: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def _check(logits, temperature, seeds, num_splits=None) -> torch.Tensor:
    out = race_sample(logits, temperature, seeds, num_splits=num_splits)
    ref = race_sample_ref(logits, temperature, race_uniforms(seeds, logits.shape[1]))
    assert out.dtype == torch.int64 and out.shape == (logits.shape[0],)
    assert torch.equal(out.cpu(), ref.cpu())
    return out.cpu()


@pytest.mark.parametrize("num_splits", [1, 2, 3, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_race_sample_matches_reference(num_splits, dtype, device):
    """V = 5000 is not a multiple of the tile; 2 and 3 splits cover 4096 + 904 and 2048 + 2048 + 904
    columns. Rows: random, greedy, random with bans, all banned (random and greedy), near-greedy."""
    vocab = 5000
    logits = _logits(6, vocab)
    banned = [int(logits[2].argmax()), 7, *range(1000, 1200)]
    logits[2, banned] = float("-inf")
    logits[3] = logits[4] = float("-inf")
    logits[5, : vocab // 2] = float("-inf")
    temperature = torch.tensor([1.0, 0.0, 0.7, 2.5, 0.0, 0.05], device=device)
    out = _check(logits.to(dtype).to(device), temperature, _seeds(6, device), num_splits)
    assert out[1] == logits[1].to(dtype).float().argmax()
    assert out[2] not in banned
    assert out[3] == 0 and out[4] == 0
    assert out[5] >= vocab // 2


@pytest.mark.parametrize("num_splits", [1, 2, 4])
def test_greedy_ties_go_to_lowest_index(num_splits, device):
    """Equal maxima in different tiles and (with 2 and 4 splits, ranges of 4096 and 2048 columns)
    different splits, in the same lane of consecutive tiles, and a constant row."""
    vocab = 3 * BLOCK + 100
    logits = _logits(3, vocab, seed=1)
    logits[0, [BLOCK + 7, 2 * BLOCK + 3, 3 * BLOCK + 50]] = 100.0
    logits[1, [3 + BLOCK, 9, 3]] = 100.0
    logits[2] = 1.5
    temperature = torch.zeros(3, device=device)
    out = _check(logits.to(device), temperature, _seeds(3, device), num_splits)
    assert out.tolist() == [BLOCK + 7, 3, 0]
    assert torch.equal(out, logits.argmax(-1))


def test_result_does_not_depend_on_splits_or_other_rows(device):
    vocab = 9000
    logits = _logits(4, vocab, seed=2, scale=1.0).to(device)
    temperature = torch.tensor([1.0, 0.3, 3.0, 1.0], device=device)
    seeds = _seeds(4, device, seed=3)
    first = race_sample(logits, temperature, seeds, num_splits=1)
    for splits in (2, 3, 5, None):
        assert torch.equal(race_sample(logits, temperature, seeds, num_splits=splits), first)
    alone = race_sample(logits[2:3], temperature[2:3], seeds[2:3])
    assert alone.item() == first[2].item()
    other_seed = race_sample(logits, temperature, seeds + 1, num_splits=1)
    assert not torch.equal(other_seed, first)  # 4 rows of 9000 nearly flat tokens: equal by chance ~1e-8


def test_race_uniforms_are_philox_uniforms(device):
    seeds = _seeds(3, device, seed=4)
    u = race_uniforms(seeds, 3000).cpu()
    assert u.dtype == torch.float32 and u.shape == (3, 3000)
    assert (u >= 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(u[0], u[1])
    assert torch.equal(race_uniforms(seeds[1:2], 3000).cpu()[0], u[1])  # a row's draw is its own


def test_race_uniforms_at_are_the_race_uniforms_at_those_ids(device):
    seeds = _seeds(4, device, seed=9)
    vocab = 5000
    full = race_uniforms(seeds, vocab).cpu()
    ids = torch.randint(0, vocab, (4, 70), generator=torch.Generator().manual_seed(1))
    ids[0, :3] = torch.tensor([0, vocab - 1, 0])  # both ends, and a repeat
    for dtype in (torch.int64, torch.int32):
        got = race_uniforms_at(seeds, ids.to(device=device, dtype=dtype)).cpu()
        assert got.dtype == torch.float32 and got.shape == (4, 70)
        assert torch.equal(got, full.gather(1, ids))
    assert race_uniforms_at(seeds, torch.empty(4, 0, dtype=torch.int64, device=device)).shape == (4, 0)
    with pytest.raises(ValueError, match="token_ids"):
        race_uniforms_at(seeds, ids[:2].to(device))


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    return (((counts.double() - expected) ** 2) / expected).sum().item()


ROW = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0, -3.0, 0.3])


def test_race_distribution_matches_softmax(device):
    """4000 draws of the race formula on the kernel's uniforms (one Philox stream, cut into rows of 8)
    follow softmax(logits / T). 7 degrees of freedom: P(chi2 > 30) is about 1e-4."""
    draws, temperature = 4000, 0.8
    uniforms = race_uniforms(_seeds(1, device, seed=5), draws * ROW.numel()).cpu().view(draws, -1)
    logits = ROW.expand(draws, -1)
    out = race_sample_ref(logits, torch.full((draws,), temperature), uniforms)
    counts = torch.bincount(out, minlength=ROW.numel())
    probs = torch.softmax(ROW / temperature, -1)
    assert _chi_square(counts, probs) < 30
    assert (counts / draws - probs).abs().max() < 0.03


def test_race_sample_rows_with_distinct_seeds_follow_softmax(device):
    """The kernel itself, one draw per row with its own seed (few rows: the interpreter is slow)."""
    rows, temperature = 300, 1.5
    logits = ROW.expand(rows, -1).contiguous().to(torch.bfloat16).to(device)
    temperatures = torch.full((rows,), temperature, device=device)
    seeds = _seeds(rows, device, seed=6)
    out = race_sample(logits, temperatures, seeds).cpu()
    counts = torch.bincount(out, minlength=ROW.numel())
    assert _chi_square(counts, torch.softmax(ROW / temperature, -1)) < 30


@pytest.mark.parametrize("rows", [1, 3, 8, 100, 131, 264, 1000])
@pytest.mark.parametrize("vocab", [1, 1000, 5000, 32000, 128256])
def test_sample_splits(rows, vocab):
    for sms in (tuning.DEFAULT_SM_COUNT, 16):
        splits = tuning.sample_splits(rows, vocab, sms)
        assert 1 <= splits <= tuning.SAMPLE_MAX_SPLITS and splits & (splits - 1) == 0
        assert splits == 1 or vocab // splits >= BLOCK
        if splits < tuning.SAMPLE_MAX_SPLITS and vocab // (2 * splits) >= BLOCK:
            assert rows * splits >= tuning.SPLIT_TARGET_WAVES * sms  # enough programs, or capped
    assert tuning.sample_splits(1, 128256) == 32
    assert tuning.sample_splits(1000, 128256) == 1


def test_race_sample_rejects_bad_inputs(device):
    logits = torch.zeros(2, 16, device=device)
    t, seeds = torch.ones(2, device=device), torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="logits"):
        race_sample(logits[0], t, seeds)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        race_sample(logits.to(torch.int32), t, seeds)
    with pytest.raises(ValueError, match="unit stride"):
        race_sample(torch.zeros(16, 2, device=device).t(), t, seeds)
    with pytest.raises(ValueError, match="temperature"):
        race_sample(logits, t.double(), seeds)
    with pytest.raises(ValueError, match="seeds"):
        race_sample(logits, t, seeds[:1])
    with pytest.raises(ValueError, match="num_splits"):
        race_sample(logits, t, seeds, num_splits=0)
    assert race_sample(logits[:0], t[:0], seeds[:0]).shape == (0,)
