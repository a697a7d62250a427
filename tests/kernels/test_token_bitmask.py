"""The token-bitmask Triton kernel vs. the torch reference (on CPU through Triton's interpreter):
vocab sizes that are not multiples of 32 or of the block (2003, 5000, 128256, 151936), forced
blocks, masks narrower and wider than the vocab, row_indices subsets (int32/int64, repeated rows),
all-zero and all-ones masks, fp32/fp16/bf16 logits, strided rows; plus the block heuristic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagoda.kernels import tuning
from pagoda.kernels.token_bitmask import (
    TOKEN_BITMASK_MAX_BLOCK,
    TOKEN_BITMASK_MIN_BLOCK,
    apply_token_bitmask_triton,
    block_size,
)
from pagoda.sample.token_bitmask import apply_token_bitmask_ref

# Storing -inf is exact in bf16 even where the interpreter truncates, so bf16 runs on CPU too.
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_bitmask(rows: int, width: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    rng = np.random.default_rng(seed)
    words = rng.integers(-(2**31), 2**31, size=(rows, width), dtype=np.int64).astype(np.int32)
    return torch.from_numpy(words).to(device)


def logits_of(rows: int, vocab: int, dtype, device: str, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


def check(logits, bitmask, row_indices=None, block=None):
    expected = apply_token_bitmask_ref(logits.clone().cpu(), bitmask.cpu(),
                                       None if row_indices is None else row_indices.cpu())
    out = apply_token_bitmask_triton(logits, bitmask, row_indices, block=block)
    assert out is logits
    assert torch.equal(logits.cpu(), expected)  # bit for bit: allowed logits untouched, -inf elsewhere


@pytest.mark.parametrize("vocab", [2003, 5000, 128256, 151936])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(vocab, dtype, device):
    width = -(-vocab // 32)
    check(logits_of(2, vocab, dtype, device), random_bitmask(2, width, seed=vocab, device=device))


@pytest.mark.parametrize("block", [32, 64, 1024, 4096])
@pytest.mark.parametrize("vocab,width", [(2003, 63), (2003, 60), (2003, 70), (100, 4), (31, 1)])
def test_forced_blocks_and_mask_widths(block, vocab, width, device):
    """width 60 < ceil(2003 / 32): columns >= 1920 disallowed; width 70: bits past the vocab ignored."""
    logits = logits_of(3, vocab, torch.float32, device)
    check(logits, random_bitmask(3, width, seed=block + width, device=device), block=block)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("indices", [[4], [5, 0, 2], [1, 3, 1]])
def test_row_indices(index_dtype, indices, device):
    vocab = 2003
    logits = logits_of(6, vocab, torch.float16, device)
    bitmask = random_bitmask(len(indices), 63, seed=len(indices), device=device)
    check(logits, bitmask, torch.tensor(indices, dtype=index_dtype, device=device), block=512)


def test_all_zero_and_all_ones(device):
    vocab = 5000
    width = -(-vocab // 32)
    logits = logits_of(4, vocab, torch.float32, device)
    before = logits.clone()
    bitmask = torch.zeros(2, width, dtype=torch.int32, device=device)
    bitmask[1] = -1
    apply_token_bitmask_triton(logits, bitmask, torch.tensor([3, 1], device=device))
    assert torch.isneginf(logits[3]).all()
    assert torch.equal(logits[[0, 1, 2]], before[[0, 1, 2]])


def test_strided_rows_and_mask(device):
    """Logits rows with a padded stride (a slice of a wider buffer) and a column-sliced bitmask."""
    buffer = logits_of(3, 2100, torch.float32, device)
    logits = buffer[:, :2003]
    bitmask = random_bitmask(3, 126, seed=7, device=device)[:, ::2]
    expected_tail = buffer[:, 2003:].clone()
    check(logits, bitmask)
    assert torch.equal(buffer[:, 2003:], expected_tail)


def test_empty(device):
    logits = logits_of(2, 64, torch.float32, device)
    before = logits.clone()
    apply_token_bitmask_triton(logits, torch.zeros(0, 2, dtype=torch.int32, device=device),
                               torch.zeros(0, dtype=torch.int64, device=device))
    assert torch.equal(logits, before)


def test_block_size_heuristic():
    assert block_size(256, 128256) == TOKEN_BITMASK_MAX_BLOCK
    assert block_size(1, 128256) == TOKEN_BITMASK_MIN_BLOCK
    assert block_size(8, 2003) == TOKEN_BITMASK_MIN_BLOCK
    for rows in (1, 3, 32, 100, 1000):
        block = block_size(rows, 151936)
        assert TOKEN_BITMASK_MIN_BLOCK <= block <= TOKEN_BITMASK_MAX_BLOCK and block & (block - 1) == 0


def test_warm_up_compiles_every_block_a_step_can_pick(device, monkeypatch):
    """The start-up warm-up runs the bitmask kernel at each block size a step's mask row count can pick, with and
    without row indices (a W2 + schema run compiled BLOCK 1024 and 4096 inside its first requests before), and
    its allow-all mask leaves the logits as they were."""
    from types import SimpleNamespace

    from pagoda.kernels import token_bitmask as kernel
    from pagoda.worker.warmup import _warm_sampler

    vocab, max_num_seqs = 5000, 200
    seen, original = set(), kernel.apply_token_bitmask_triton

    def spy(logits, bitmask, row_indices=None, block=None):
        before = logits.clone()
        out = original(logits, bitmask, row_indices, block=block)
        assert torch.equal(out, before)
        seen.add((block, row_indices is None))
        return out

    monkeypatch.setattr(kernel, "apply_token_bitmask_triton", spy)
    runner = SimpleNamespace(vocab_size=vocab, device=torch.device(device),
                             config=SimpleNamespace(model=SimpleNamespace(torch_dtype=torch.float32),
                                                    scheduler=SimpleNamespace(max_num_seqs=max_num_seqs)))
    _warm_sampler(runner)
    sms = tuning.sm_count(runner.device.index) if device == "cuda" else tuning.DEFAULT_SM_COUNT
    blocks = {kernel.block_size(rows, vocab, sms) for rows in range(1, max_num_seqs + 1)}
    assert len(blocks) > 1
    assert seen == {(block, plain) for block in blocks for plain in (True, False)}
