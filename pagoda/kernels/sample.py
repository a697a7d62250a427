"""Fused sampling (Triton): one token per row of [R, V] logits by the exponential race, in one read.

Without top-k, top-p or min-p, the sampler's draw from softmax(logits / T) is the Gumbel-max race
argmax_v(logits[v] / T - log q[v]), q[v] ~ Exp(1). In torch that is a float32 copy, a division, an
exponential fill, a clamp, a log, a subtraction and an argmax over [R, V] (~2 ms per step at
1000 x 128256 on an H200); here each program streams its logits once and keeps a running best.

Per row r (all arithmetic in float32):
- temperature[r] > 0: score[v] = logits[v] / T - log(max(q[v], 1e-20)), q[v] = -log(u[v]), and -inf
  where logits[v] / T < thresholds[r] (-inf by default: the top-p/min-p cut of kernels/top_p.py),
  u[v] = tl.rand(seeds[r], v), Philox keyed by the row's 64-bit seed with the global vocab index v as
  counter. So a row's draw depends on its logits, temperature and seed only: not on the other rows,
  the split count or the tile size.
- temperature[r] <= 0 (greedy): score[v] = logits[v], no random numbers.
- result = argmax(score), ties to the lowest index (as torch.argmax); a row whose scores are all -inf
  (every token banned) gives 0, as torch.argmax does. NaNs are not treated specially.

Grid: (R, S). Program (r, s) covers one BLOCK_V-aligned vocab range in tiles of BLOCK_V. Each lane
keeps its own (best score, best index) with strict '>' updates, so a lane keeps its earliest
maximum; one reduction at the end takes the lowest index among the lanes at the maximum. With S == 1
the program writes the token id; with S > 1 it writes its (score, index) to a float32/int64 [R, S]
workspace and a second kernel takes, per row, the lowest index among the splits at the maximum.
S comes from `tuning.sample_splits` unless forced; it changes speed, never results.

Inputs: logits [R, V] float32/float16/bfloat16 with unit stride in V (any row stride);
temperature [R] float32; seeds [R] int64; all on one device. Output: [R] int64 token ids.
`race_sample_ref` is the torch reference given the uniforms explicitly; `race_uniforms` draws the
uniforms the kernel uses (through the same `_uniform` helper) so that tests can feed them to it, and
`race_uniforms_at` the same uniforms at given vocab indices only (the top-k path's candidates).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning

# Smallest q = -log(u), as on the torch path: log(q) stays finite should u round to 1.
_MIN_Q = tl.constexpr(1e-20)
_LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_UNIFORMS_AT_BLOCK = 256


@triton.jit
def _uniform(seed, offs):
    """u in [0, 1) for vocab indices `offs` of the row keyed by `seed`: the one place both kernels draw."""
    return tl.rand(seed, offs)


@triton.jit
def _race_kernel(
    logits_ptr, temperature_ptr, seeds_ptr, threshold_ptr, out_ptr, best_score_ptr, best_index_ptr,
    V, cols_per_split, stride_row,
    BLOCK_V: tl.constexpr, SPLIT: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    begin = split * cols_per_split
    end = tl.minimum(begin + cols_per_split, V)
    temperature = tl.load(temperature_ptr + row)
    seed = tl.load(seeds_ptr + row)
    threshold = tl.load(threshold_ptr + row)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    lanes = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), float("-inf"), tl.float32)
    best_index = begin + lanes  # an all -inf range reports its first index
    for start in range(begin, end, BLOCK_V):
        offs = start + lanes
        x = tl.load(row_ptr + offs, mask=offs < end, other=float("-inf")).to(tl.float32)
        if temperature > 0.0:
            q = tl.maximum(-tl.log(_uniform(seed, offs)), _MIN_Q)
            # div_rn: IEEE division as torch's logits / temperature (Triton's '/' is approximate on GPU)
            scaled = tl.math.div_rn(x, temperature)
            score = tl.where(scaled >= threshold, scaled - tl.log(q), float("-inf"))
        else:
            score = x
        better = score > best
        best = tl.where(better, score, best)
        best_index = tl.where(better, offs, best_index)
    top = tl.max(best, axis=0)
    index = tl.min(tl.where(best == top, best_index, V), axis=0).to(tl.int64)
    if SPLIT == 1:
        tl.store(out_ptr + row, index)
    else:
        tl.store(best_score_ptr + row * SPLIT + split, top)
        tl.store(best_index_ptr + row * SPLIT + split, index)


@triton.jit
def _race_reduce_kernel(best_score_ptr, best_index_ptr, out_ptr, V,
                        SPLIT: tl.constexpr, BLOCK_S: tl.constexpr):
    row = tl.program_id(0)
    splits = tl.arange(0, BLOCK_S)
    mask = splits < SPLIT
    score = tl.load(best_score_ptr + row * SPLIT + splits, mask=mask, other=float("-inf"))
    index = tl.load(best_index_ptr + row * SPLIT + splits, mask=mask, other=V)
    top = tl.max(score, axis=0)
    tl.store(out_ptr + row, tl.min(tl.where(score == top, index, V), axis=0))


@triton.jit
def _uniforms_kernel(seeds_ptr, out_ptr, V, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    seed = tl.load(seeds_ptr + row)
    tl.store(out_ptr + row.to(tl.int64) * V + offs, _uniform(seed, offs), mask=offs < V)


@triton.jit
def _uniforms_at_kernel(seeds_ptr, ids_ptr, out_ptr, K, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = offs < K
    seed = tl.load(seeds_ptr + row)
    ids = tl.load(ids_ptr + row.to(tl.int64) * K + offs, mask=mask, other=0).to(tl.int32)  # as the race's offs
    tl.store(out_ptr + row.to(tl.int64) * K + offs, _uniform(seed, ids), mask=mask)


def _block_v(vocab: int) -> int:
    """Tile width: SAMPLE_BLOCK_V, or the vocab rounded up to a power of two when it is smaller."""
    return min(tuning.SAMPLE_BLOCK_V, tuning.next_power_of_2(vocab))


def _check_inputs(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [R, V] with V >= 1, got {tuple(logits.shape)}")
    if logits.dtype not in _LOGITS_DTYPES:
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.stride(1) != 1:
        raise ValueError(f"logits must have unit stride in V, got strides {logits.stride()}")
    rows = logits.shape[0]
    for name, tensor, dtype in (("temperature", temperature, torch.float32), ("seeds", seeds, torch.int64)):
        if tensor.shape != (rows,) or tensor.dtype != dtype:
            raise ValueError(f"{name} must be [{rows}] {dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        if tensor.device != logits.device:
            raise ValueError(f"{name} is on {tensor.device}, logits on {logits.device}")


def race_sample(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor,
                num_splits: int | None = None, thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids [R] int64: argmax of the race scores of each row (see the module docstring);
    `num_splits` forces the number of vocab splits per row (tests); `thresholds` [R] float32 (default -inf)
    leaves out of a random row's race every token with logits / T below its threshold (top-p, min-p:
    kernels/top_p.py)."""
    _check_inputs(logits, temperature, seeds)
    if thresholds is None:
        thresholds = torch.full_like(temperature, float("-inf"))
    elif thresholds.shape != temperature.shape or thresholds.dtype != torch.float32 \
            or thresholds.device != logits.device:
        raise ValueError(f"thresholds must be [{logits.shape[0]}] float32 on {logits.device}, got "
                         f"{tuple(thresholds.shape)} {thresholds.dtype} on {thresholds.device}")
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    block = _block_v(vocab)
    if num_splits is None:
        sms = tuning.sm_count(logits.device.index) if logits.is_cuda else tuning.DEFAULT_SM_COUNT
        num_splits = tuning.sample_splits(rows, vocab, sms)
    cols_per_split = triton.cdiv(triton.cdiv(vocab, num_splits), block) * block
    split = triton.cdiv(vocab, cols_per_split)  # no empty ranges
    best_score = torch.empty(rows, split, dtype=torch.float32, device=logits.device) if split > 1 else out
    best_index = torch.empty(rows, split, dtype=torch.int64, device=logits.device) if split > 1 else out
    _race_kernel[(rows, split)](
        logits, temperature, seeds, thresholds, out, best_score, best_index,
        vocab, cols_per_split, logits.stride(0),
        BLOCK_V=block, SPLIT=split, num_warps=min(tuning.SAMPLE_NUM_WARPS, tuning.row_num_warps(block)),
    )
    if split > 1:
        _race_reduce_kernel[(rows,)](best_score, best_index, out, vocab,
                                     SPLIT=split, BLOCK_S=tuning.next_power_of_2(split), num_warps=1)
    return out


def race_uniforms(seeds: torch.Tensor, vocab: int) -> torch.Tensor:
    """The uniforms u [R, vocab] float32 that `race_sample` draws for rows keyed by `seeds` [R] int64
    (for tests: `race_sample_ref(logits, temperature, race_uniforms(seeds, V))` is its reference)."""
    if seeds.dim() != 1 or seeds.dtype != torch.int64:
        raise ValueError(f"seeds must be [R] int64, got {tuple(seeds.shape)} {seeds.dtype}")
    if vocab < 1:
        raise ValueError(f"vocab must be >= 1, got {vocab}")
    out = torch.empty(seeds.shape[0], vocab, dtype=torch.float32, device=seeds.device)
    if seeds.shape[0] == 0:
        return out
    block = _block_v(vocab)
    _uniforms_kernel[(seeds.shape[0], triton.cdiv(vocab, block))](seeds, out, vocab, BLOCK_V=block)
    return out


def race_uniforms_at(seeds: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The uniforms u [R, K] float32 that `race_sample` draws at vocab indices `token_ids` [R, K] (any int
    dtype, each in [0, 2**31)) of rows keyed by `seeds` [R] int64: race_uniforms(seeds, V).gather(1, ids),
    without the [R, V] draw (the top-k path's candidates, sample/top_k_path.py)."""
    if seeds.dim() != 1 or seeds.dtype != torch.int64:
        raise ValueError(f"seeds must be [R] int64, got {tuple(seeds.shape)} {seeds.dtype}")
    if token_ids.dim() != 2 or token_ids.shape[0] != seeds.shape[0] or token_ids.device != seeds.device:
        raise ValueError(f"token_ids must be [{seeds.shape[0]}, K] on {seeds.device}, got "
                         f"{tuple(token_ids.shape)} on {token_ids.device}")
    ids = token_ids.contiguous()
    rows, k = ids.shape
    out = torch.empty(rows, k, dtype=torch.float32, device=seeds.device)
    if rows == 0 or k == 0:
        return out
    block = _UNIFORMS_AT_BLOCK  # one compiled variant whatever k (a k-sized block would compile per k)
    _uniforms_at_kernel[(rows, triton.cdiv(k, block))](seeds, ids, out, k, BLOCK_K=block)
    return out


def race_sample_ref(logits: torch.Tensor, temperature: torch.Tensor, uniforms: torch.Tensor,
                    thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference of `race_sample` with the uniforms [R, V] float32 given explicitly."""
    x = logits.to(torch.float32)
    q = (-torch.log(uniforms)).clamp_min(_MIN_Q.value)
    positive = temperature > 0
    scaled = x / torch.where(positive, temperature, torch.ones_like(temperature)).unsqueeze(1)
    if thresholds is not None:
        scaled = scaled.masked_fill(scaled < thresholds.unsqueeze(1), float("-inf"))
    score = torch.where(positive.unsqueeze(1), scaled - torch.log(q), x)
    return score.argmax(dim=-1)
