"""compute_prompt_logprobs: conventions shared with the sampler, chunking, shapes."""

import pytest
import torch

import pagoda.sample.logprobs as logprobs_mod
from pagoda.sample import compute_prompt_logprobs


@pytest.mark.parametrize("k", [0, 1, 5])
def test_matches_direct_log_softmax(k, monkeypatch):
    monkeypatch.setattr(logprobs_mod, "_PROMPT_CHUNK_ROWS", 3)  # several chunks
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(10, 50, generator=g) * 2).to(torch.float16)
    targets = torch.randint(0, 50, (10,), generator=g)
    ids, values, ranks = compute_prompt_logprobs(logits, targets, k)
    ref = torch.log_softmax(logits.float(), -1)
    assert ids.shape == (10, k + 1) and values.shape == (10, k + 1) and ranks.shape == (10,)
    assert ids.dtype == torch.int64 and values.dtype == torch.float32 and ranks.dtype == torch.int64
    assert torch.equal(ids[:, 0], targets)
    torch.testing.assert_close(values[:, 0], ref.gather(1, targets[:, None])[:, 0])
    if k:
        top = ref.topk(k, -1)
        assert torch.equal(ids[:, 1:], top.indices)
        torch.testing.assert_close(values[:, 1:], top.values)
    expected_ranks = 1 + (ref > ref.gather(1, targets[:, None])).sum(-1)
    assert torch.equal(ranks, expected_ranks)


def test_empty_and_bad_shapes():
    ids, values, ranks = compute_prompt_logprobs(torch.zeros(0, 8), torch.zeros(0, dtype=torch.int64), 2)
    assert ids.shape == (0, 3) and values.shape == (0, 3) and ranks.shape == (0,)
    with pytest.raises(ValueError, match="logits"):
        compute_prompt_logprobs(torch.zeros(3, 8), torch.zeros(2, dtype=torch.int64), 2)
