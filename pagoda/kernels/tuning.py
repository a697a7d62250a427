"""Launch heuristics for the Triton kernels, kept in one place so they can be tuned on the GPU.

Invariant: every function here is pure host code on Python ints (no device syncs), so the choices
are stable under CUDA-graph capture; every choice it makes is *correct* for any input — the
heuristics only trade speed, never results.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

# --- paged attention -------------------------------------------------------------------------------
# Rows of one program = BLOCK_Q query tokens x GROUP query heads (one KV head); tl.dot needs >= 16.
ATTN_DECODE_BLOCK_M = 16  # when max_query_len is small (decode, speculative verify)
ATTN_PREFILL_BLOCK_M = 64  # when the batch holds prefill chunks
ATTN_SMALL_QUERY_LEN = 8  # max_query_len at or below this counts as "decode-like"
# Split-KV (flash-decoding): used when too few programs would run to fill the GPU on long contexts.
SPLIT_MIN_SEQ_LEN = 1024  # max_seq_len below this: never split
SPLIT_MIN_PARTITION = 256  # each split covers at least this many KV positions (of max_seq_len)
SPLIT_MAX = 32  # most splits
SPLIT_TARGET_WAVES = 2  # aim for about this many programs per SM
DEFAULT_SM_COUNT = 132  # H100/H200; used when no CUDA device is present (interpreter)


# Decode-only batches of at most FUSED_DECODE_MAX_REQS requests run rotary + KV write + attention +
# split reduce as one kernel (pagoda.kernels.decode_attention). On the H200 (tests/kernels/bench_decode.py,
# Llama-3-8B attention) it is faster at 8 and 64 requests and slower at 1000 (222 vs 216 us a layer);
# 64 is a CUDA-graph bucket, so eager and graph runs of a batch take the same path.
# PAGODA_FUSED_DECODE_ATTENTION=0 runs the unfused kernels everywhere, for A/B runs.
FUSED_DECODE_ATTENTION = os.environ.get("PAGODA_FUSED_DECODE_ATTENTION", "1") == "1"
FUSED_DECODE_MAX_REQS = 64


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int | None = None) -> int:
    if not torch.cuda.is_available():
        return DEFAULT_SM_COUNT
    index = torch.cuda.current_device() if device_index is None else device_index
    return torch.cuda.get_device_properties(index).multi_processor_count


@dataclass(frozen=True)
class AttentionLaunch:
    block_m: int  # query rows (tokens x group heads) per program, power of two >= 16
    block_q: int  # query tokens per program = block_m // group
    tile_n: int  # KV positions per inner iteration, power of two >= 16
    head_pad: int  # head size rounded up to a power of two (>= 16)
    num_splits: int  # 1: single pass; > 1: split-KV with a reduction kernel
    num_warps: int
    num_stages: int


def attention_launch(
    *,
    num_reqs: int,
    num_tokens: int,
    max_query_len: int,
    max_seq_len: int,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    device: torch.device,
    num_splits: int | None = None,
) -> AttentionLaunch:
    """Pick tile sizes, warps and the split count; `num_splits` forces a split count (tests, tuning)."""
    group = num_heads // num_kv_heads
    head_pad = max(16, next_power_of_2(head_size))
    decode_like = max_query_len <= ATTN_SMALL_QUERY_LEN
    block_m = ATTN_DECODE_BLOCK_M if decode_like else ATTN_PREFILL_BLOCK_M
    block_m = max(block_m, next_power_of_2(group))
    if head_pad >= 256:
        block_m = max(16, min(block_m, 32), next_power_of_2(group))
    block_q = block_m // group
    tile_n = 32 if head_pad >= 256 else 64
    num_warps = 8 if (head_pad >= 256 or block_m >= 128) else 4
    if num_splits is None:
        num_splits = 1
        if decode_like and max_seq_len >= SPLIT_MIN_SEQ_LEN:
            dev_index = device.index if device.type == "cuda" else None
            sms = sm_count(dev_index) if device.type == "cuda" else DEFAULT_SM_COUNT
            programs = max(1, (num_tokens // block_q + num_reqs) * num_kv_heads)
            if programs < sms:
                by_occupancy = -(-SPLIT_TARGET_WAVES * sms // programs)
                by_length = max(1, max_seq_len // SPLIT_MIN_PARTITION)
                num_splits = max(1, min(SPLIT_MAX, by_occupancy, by_length))
    return AttentionLaunch(block_m, block_q, tile_n, head_pad, max(1, int(num_splits)), num_warps, 2)


# --- elementwise / row kernels ---------------------------------------------------------------------
def row_num_warps(block: int) -> int:
    """Warps for a kernel that keeps one row of `block` elements in registers."""
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    if block >= 512:
        return 4
    return 2 if block >= 128 else 1


ELEMENTWISE_BLOCK = 1024  # elements per program for activation kernels along the feature dim
KV_WRITE_BLOCK = 1024  # elements of one token's [num_kv_heads * head_size] per program
ROTARY_BLOCK_H = 8  # heads per inner iteration of the rotary kernel


# --- skinny matmul (decode GEMV) -------------------------------------------------------------------
GEMV_MAX_M = 4  # rows the gemv kernel takes; the linear layers use it up to GEMV_USE_MAX_M
# Decode batches of at most this many rows go through gemv instead of cuBLAS; the environment
# variable PAGODA_GEMV_MAX_M overrides it (0 turns gemv off) for A/B runs on the GPU.
GEMV_USE_MAX_M = int(os.environ.get("PAGODA_GEMV_MAX_M", "1"))


def gemv_applies(x: torch.Tensor) -> bool:
    """Whether the model's products with input x run in the Triton GEMV rather than in cuBLAS: x is
    a CUDA [M, K] tensor with 1 <= M <= GEMV_USE_MAX_M. It depends on shapes only, so CUDA-graph and
    eager runs of the same batch compute identically; on CPU it is always False, so CPU code never
    needs Triton."""
    return x.is_cuda and x.dim() == 2 and 0 < x.shape[0] <= GEMV_USE_MAX_M


@dataclass(frozen=True)
class GemvLaunch:
    block_n: int  # output features per program
    block_k: int  # input features per loop iteration
    split_k: int  # K ranges reduced by a second kernel (1: none)
    num_warps: int
    num_stages: int


def gemv_launch(m: int, n: int, k: int) -> GemvLaunch:
    """Tiles for y[m, n] = x[m, k] @ w[n, k]ᵀ. 8 x 512 tiles, 3 stages, no split were best or within 4 %
    of best on every Llama-3-8B projection at m = 1 on the H200 (tests/kernels/bench_gemv.py --sweep);
    K is split only when too few programs would run to cover the SMs (narrow outputs)."""
    block_k = 512 if m == 1 else 256
    block_n = 8 if m <= 2 else 4
    programs = -(-n // block_n)
    split_k = 1
    while programs * split_k < DEFAULT_SM_COUNT and k // (split_k * 2) >= 4 * block_k:
        split_k *= 2
    return GemvLaunch(block_n, block_k, split_k, num_warps=4, num_stages=3)


# --- sampling (exponential race) -------------------------------------------------------------------
# CUDA batches without top-k/top-p/min-p sample with one fused kernel (pagoda.kernels.sample);
# PAGODA_FUSED_SAMPLING=0 keeps them on the torch path (same q), for A/B runs.
FUSED_SAMPLING = os.environ.get("PAGODA_FUSED_SAMPLING", "1") == "1"
# Not yet swept on the GPU: 2048 / (8 warps x 32 lanes) = 8 entries per thread per iteration.
SAMPLE_BLOCK_V = 2048  # vocab entries per loop iteration of one program (less for a smaller vocab)
SAMPLE_NUM_WARPS = 8
SAMPLE_MAX_SPLITS = 32  # most vocab splits (programs) per row


def sample_splits(num_rows: int, vocab: int, sms: int = DEFAULT_SM_COUNT) -> int:
    """Vocab splits S per row for `race_sample`: a power of two, at least 1 and at most
    SAMPLE_MAX_SPLITS, large enough that num_rows * S programs cover about SPLIT_TARGET_WAVES waves of
    `sms` SMs (small batches need several programs per row), and small enough that every split keeps
    at least SAMPLE_BLOCK_V columns (one full tile)."""
    rows = max(1, num_rows)
    splits = min(SAMPLE_MAX_SPLITS, next_power_of_2(-(-SPLIT_TARGET_WAVES * sms // rows)))
    while splits > 1 and vocab // splits < SAMPLE_BLOCK_V:
        splits //= 2
    return splits
