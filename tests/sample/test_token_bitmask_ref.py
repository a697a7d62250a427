"""The torch token-bitmask reference vs. a per-token Python loop (odd vocab sizes, masks narrower
and wider than the vocab, row subsets and repeats, all-zero and all-ones masks), the dispatch on
CPU (no Triton imported), input checks, and bitmask_to_device."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pagoda.sample.token_bitmask import (
    apply_token_bitmask_,
    apply_token_bitmask_ref,
    bitmask_to_device,
    unpack_bitmask,
)


def random_bitmask(rows: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-(2**31), 2**31, size=(rows, width), dtype=np.int64).astype(np.int32)


def naive(logits: torch.Tensor, bitmask: np.ndarray, row_indices: list[int] | None) -> torch.Tensor:
    out = logits.clone()
    vocab = logits.shape[1]
    rows = range(bitmask.shape[0]) if row_indices is None else row_indices
    for i, row in enumerate(rows):
        for t in range(vocab):
            word = t // 32
            allowed = word < bitmask.shape[1] and (int(bitmask[i, word]) >> (t % 32)) & 1
            if not allowed:
                out[row, t] = float("-inf")
    return out


def logits_of(rows: int, vocab: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("vocab,width", [(64, 2), (100, 4), (70, 2), (33, 5), (31, 1), (1, 1)])
@pytest.mark.parametrize("indices", [None, [2], [3, 0], [1, 1, 3]])
def test_reference_matches_naive(vocab, width, indices):
    """width 2 for vocab 70: columns 64-69 are disallowed; width 5 for vocab 33: extra bits ignored."""
    rows = 4
    bitmask = random_bitmask(rows if indices is None else len(indices), width, seed=vocab + width)
    logits = logits_of(rows, vocab)
    expected = naive(logits, bitmask, indices)
    idx = None if indices is None else torch.tensor(indices)
    out = apply_token_bitmask_ref(logits, torch.from_numpy(bitmask), idx)
    assert out is logits
    assert torch.equal(logits, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dispatch_on_cpu_all_zero_all_ones(dtype):
    vocab = 2003
    width = -(-vocab // 32)
    logits = logits_of(3, vocab, dtype)
    before = logits.clone()
    bitmask = np.zeros((3, width), np.int32)
    bitmask[1] = -1  # all ones: row 1 unchanged
    bitmask[2, 0] = 1 << 5  # only token 5 allowed
    out = apply_token_bitmask_(logits, torch.from_numpy(bitmask))
    assert out is logits and out.dtype == dtype
    assert torch.isneginf(logits[0]).all()
    assert torch.equal(logits[1], before[1])
    assert logits[2, 5] == before[2, 5] and torch.isneginf(logits[2]).sum() == vocab - 1


def test_unpack_bit_order():
    bitmask = torch.tensor([[1 - 2**31, 1 << 2]], dtype=torch.int32)  # bits 0 and 31; bit 2
    allowed = unpack_bitmask(bitmask, 64)
    assert allowed[0].nonzero().flatten().tolist() == [0, 31, 34]


def test_noncontiguous_logits_and_empty_mask():
    logits = logits_of(4, 40).t().contiguous().t()  # column stride != 1
    bitmask = random_bitmask(4, 2)
    expected = naive(logits, bitmask, None)
    apply_token_bitmask_(logits, torch.from_numpy(bitmask))
    assert torch.equal(logits, expected)
    before = logits.clone()
    apply_token_bitmask_(logits, torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0, dtype=torch.int64))
    assert torch.equal(logits, before)


def test_input_checks():
    logits = logits_of(2, 64)
    with pytest.raises(TypeError, match="int32"):
        apply_token_bitmask_(logits, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="row_indices"):
        apply_token_bitmask_(logits, torch.zeros(1, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="row_indices"):
        apply_token_bitmask_(logits, torch.zeros(1, 2, dtype=torch.int32), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="numpy int32"):
        bitmask_to_device(np.zeros((2, 2), np.int64), "cpu")


def test_bitmask_to_device_cpu():
    array = random_bitmask(3, 4)
    tensor = bitmask_to_device(array, torch.device("cpu"))
    assert tensor.dtype == torch.int32 and tensor.shape == (3, 4)
    assert np.array_equal(tensor.numpy(), array)
    as_uint = bitmask_to_device(array.view(np.uint32)[:, ::2], "cpu")  # strided, uint32 bit for bit
    assert np.array_equal(as_uint.numpy(), array[:, ::2])


SCRIPT = r"""
import sys
sys.modules["triton"] = None  # every `import triton` now raises ImportError
import numpy as np, torch
from pagoda.sample.token_bitmask import apply_token_bitmask_, bitmask_to_device
logits = torch.zeros(2, 40)
apply_token_bitmask_(logits, bitmask_to_device(np.array([[1, 0], [-1, -1]], np.int32), "cpu"))
assert torch.isneginf(logits[0]).sum() == 39 and not torch.isneginf(logits[1]).any()
loaded = sorted(m for m in sys.modules if m.startswith("pagoda.kernels.") and m != "pagoda.kernels.tuning")
assert not loaded, loaded
print("ok")
"""


def test_cpu_path_imports_no_triton():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
