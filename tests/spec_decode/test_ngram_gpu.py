"""The device n-gram lookup finds exactly the host proposer's drafts (spec_decode/ngram_proposer.py)."""

import numpy as np
import pytest
import torch

from pagoda.spec_decode.ngram_gpu import ngram_lookup
from pagoda.spec_decode.ngram_proposer import NgramProposer


@pytest.mark.parametrize("seed", range(4))
def test_lookup_matches_the_host_proposer_on_random_histories(seed):
    rng = np.random.default_rng(seed)
    checked = found = 0
    for _ in range(100):
        k, low = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        high = low + int(rng.integers(0, 4))
        rows = int(rng.integers(1, 6))
        lengths = rng.integers(1, 40, size=rows)
        width = int(lengths.max()) + int(rng.integers(0, 5))  # histories may carry stale tokens past their length
        history = rng.integers(0, int(rng.integers(2, 6)), size=(rows, width))
        drafts, count = ngram_lookup(torch.from_numpy(history), torch.from_numpy(lengths), k, low, high)
        host = NgramProposer(k, low, high)
        for r in range(rows):
            want = host.propose(history[r, :lengths[r]])
            assert drafts[r, :count[r]].tolist() == want, (history[r, :lengths[r]].tolist(), k, low, high)
            checked += 1
            found += bool(want)
    assert found > checked // 4  # the histories make matches of every length


def test_lookup_prefers_the_longest_then_the_earliest_match():
    history = torch.tensor([[1, 2, 3, 9, 2, 3, 8, 1, 2, 3]])
    drafts, count = ngram_lookup(history, torch.tensor([10]), k=2, min_n=1, max_n=3)
    assert drafts[0].tolist() == [9, 2] and count.tolist() == [2]  # "1 2 3" at 0..2, not "2 3" at 4..5
    drafts, count = ngram_lookup(history, torch.tensor([10]), k=2, min_n=4, max_n=4)
    assert count.tolist() == [0]  # no earlier copy of the last 4 tokens
