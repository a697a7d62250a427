"""The logprob-statistics kernel (kernels/logprob_stats.py) against its torch reference: fp32/bf16/fp16 rows,
ragged vocab sizes (several tiles, a last partial one), banned (-inf) entries and an all -inf row, ties
with the token (not counted in its rank), a row stride wider than the vocab."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels.logprob_stats import logprob_stats
from pagoda.sample.logprobs import logprob_stats_torch


# The all -inf row takes log(0) = -inf on purpose; Triton's interpreter (numpy) warns about it.
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [1, 37, 2048, 5000])
def test_logprob_stats_match_torch(device, dtype, vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(5, vocab, generator=g) * 4).to(dtype)
    tokens = torch.randint(0, vocab, (5,), generator=g)
    if vocab > 10:
        logits[1, ::3] = float("-inf")
        tokens[1] = 1
        logits[2, :] = float("-inf")
        logits[3, 4:9] = logits[3, tokens[3]]  # ties with the token: not above it
    got = [t.cpu() for t in logprob_stats(logits.to(device), tokens.to(device))]
    want = logprob_stats_torch(logits, tokens)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32 and got[2].dtype == torch.int64
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def test_row_stride_and_empty_batch(device):
    wide = torch.randn(3, 700, generator=torch.Generator().manual_seed(1)).to(device)
    logits = wide[:, :500]  # row stride 700
    tokens = torch.tensor([0, 250, 499], device=device)
    got = logprob_stats(logits, tokens)
    want = logprob_stats_torch(logits.cpu(), tokens.cpu())
    torch.testing.assert_close(got[0].cpu(), want[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[2].cpu(), want[2])
    empty = logprob_stats(logits[:0], tokens[:0])
    assert [t.shape for t in empty] == [(0,), (0,), (0,)]
    with pytest.raises(ValueError, match="token_ids"):
        logprob_stats(logits, tokens[:2])
