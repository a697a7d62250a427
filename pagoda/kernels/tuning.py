"""Launch heuristics for the Triton kernels, kept in one place so they can be tuned on the GPU.

Invariant: every function here is pure host code on Python ints (no device syncs), so the choices
are stable under CUDA-graph capture; every choice it makes is *correct* for any input — the
heuristics only trade speed, never results.

The KV-cache storage formats live here too (`kv_format`, `quantize_kv`, `dequantize_kv`), as this is the
one kernels module that imports no Triton (the torch attention backend uses them on CPU): a cache in
the model's dtype stores values as they are; an FP8 cache (float8_e4m3fn / float8_e5m2) stores
round-to-nearest-even(clamp(x · fp32(1 / scale), ±max)) and reads back fp8 · scale, with one scale per
layer for keys and one for values. Every kernel that writes the cache rounds exactly as `quantize_kv`.
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
# Paged attention's tiles wholly before a query block's first position without masks (two tile loops instead
# of one; pagoda.kernels.paged_attention). Off until timed against the one-loop kernel on the GPU (session 20
# wrote it without a GPU): PAGODA_ATTN_UNMASKED_TILES=1 turns it on.
ATTN_UNMASKED_TILES = os.environ.get("PAGODA_ATTN_UNMASKED_TILES", "0") == "1"


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


# --- KV-cache formats (FP8 KV cache) --------------------------------------------------------------
@dataclass(frozen=True)
class KVFormat:
    """How a cache dtype stores keys and values; the kernels take these as constexprs (`constexprs()`).

    fp8: values are scaled, clamped to ±fp8_max and rounded to an FP8 grid of `fp8_mant` mantissa bits
    whose smallest normal is 2**fp8_min_exp (subnormals below it); else they are stored as they are."""

    fp8: bool
    fp8_max: float = 0.0
    fp8_mant: int = 1
    fp8_min_exp: int = 0

    def constexprs(self) -> dict:
        """FP8; FP8_MAX; FP8_DROP, the fp32 mantissa bits rounded off; FP8_MIN_NORMAL; FP8_MAGIC, the fp32
        whose ulp is the subnormal step (x + MAGIC - MAGIC rounds x to it). See kv_cache_write.quantize_fp8."""
        return {"FP8": self.fp8, "FP8_MAX": self.fp8_max, "FP8_DROP": 23 - self.fp8_mant,
                "FP8_MIN_NORMAL": 2.0 ** self.fp8_min_exp, "FP8_MAGIC": 2.0 ** (self.fp8_min_exp - self.fp8_mant + 23)}


_FP8_FORMATS = {"float8_e4m3fn": KVFormat(True, 448.0, 3, -6), "float8_e5m2": KVFormat(True, 57344.0, 2, -14)}
_PLAIN = KVFormat(False)


def kv_format(dtype: torch.dtype) -> KVFormat:
    """The storage format of a KV cache of `dtype` (float8_e4m3fn / float8_e5m2: FP8, else plain)."""
    return _FP8_FORMATS.get(str(dtype).removeprefix("torch."), _PLAIN)


def quantize_kv(x: torch.Tensor, scale: float, cache_dtype: torch.dtype) -> torch.Tensor:
    """x as the cache stores it: FP8 of clamp(x · fp32(1 / scale)) for an FP8 cache (the product in fp32),
    else x cast to the cache dtype (the scale unused)."""
    fmt = kv_format(cache_dtype)
    if not fmt.fp8:
        return x.to(cache_dtype)
    inv = torch.tensor(1.0 / scale, dtype=torch.float32, device=x.device)
    return (x.float() * inv).clamp(-fmt.fp8_max, fmt.fp8_max).to(cache_dtype)


def dequantize_kv(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Cached values in fp32: fp8 · scale for an FP8 cache, else the values themselves."""
    if not kv_format(x.dtype).fp8:
        return x.float()
    return x.float() * torch.tensor(scale, dtype=torch.float32, device=x.device)


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


# --- FP8 W8A8 decode GEMV (pagoda.kernels.fp8_gemv) -------------------------------------------------
# FP8 layers' products with at most this many rows run the FP8 GEMV (x quantized per token inside it, the FP8
# weight streamed once) instead of the quantize kernel + torch._scaled_mm; PAGODA_FP8_GEMV_MAX_M sets it. Off (0)
# by default until it has been compiled, checked and timed on a GPU (tests/kernels/bench_fp8_gemv.py): set
# PAGODA_FP8_GEMV_MAX_M=4 to use it.
FP8_GEMV_USE_MAX_M = min(GEMV_MAX_M, int(os.environ.get("PAGODA_FP8_GEMV_MAX_M", "0")))
# Whether the FP8 GEMV computes a pending RMSNorm (+ residual) in its prologue (it mirrors the rmsnorm kernel,
# so the quantized rows are meant to be bit for bit the unfused ones); PAGODA_FP8_GEMV_NORM=0 leaves the norm
# to the rmsnorm kernel.
FP8_GEMV_FUSE_NORM = os.environ.get("PAGODA_FP8_GEMV_NORM", "1") == "1"


def fp8_gemv_applies(x: torch.Tensor) -> bool:
    """Whether an FP8 layer's product with input x runs in the FP8 GEMV: x is a CUDA [M, K] tensor with
    1 <= M <= FP8_GEMV_USE_MAX_M. Shapes only (CUDA-graph and eager runs of a batch take the same path); False
    on CPU, so CPU code never needs Triton."""
    return x.is_cuda and x.dim() == 2 and 0 < x.shape[0] <= FP8_GEMV_USE_MAX_M


def fp8_gemv_launch(m: int, n: int, k: int, gated: bool = False, norm: bool = False) -> GemvLaunch:
    """Tiles for the FP8 GEMV (n: output features; gated: the weight has 2n rows). Not yet swept on the GPU
    (tests/kernels/bench_fp8_gemv.py --sweep): gemv's tiles (the same fp32 accumulators per thread), half
    the weight bytes per iteration. With the fused norm the warp count is the rmsnorm kernel's for a row of k
    (row_num_warps), which keeps its sum of squares in the same reduction tree; block_n grows with the warps.
    K is split when too few programs would cover the SMs (each split >= 4 iterations)."""
    block_k = 512 if m == 1 else 256
    block_n = 8 if m <= 2 else 4
    num_warps = 4
    if norm:
        num_warps = row_num_warps(next_power_of_2(k))
        block_n = max(1, block_n * num_warps // 4)
    while block_k > 64 and block_k // 2 >= k:
        block_k //= 2
    programs = -(-n // block_n)
    split_k = 1
    while programs * split_k < DEFAULT_SM_COUNT and k // (split_k * 2) >= 4 * block_k:
        split_k *= 2
    return GemvLaunch(block_n, block_k, split_k, num_warps=num_warps, num_stages=3)


# --- int4 weight-only matmuls (AWQ / GPTQ; pagoda.kernels.int4_gemv, int4_gemm) -----------------------
# Layers whose weights were repacked into the int4 layout at load time (CUDA only) run the Triton kernels;
# PAGODA_INT4_KERNELS=0 keeps them on the torch dequantize-then-matmul path, for A/B runs.
INT4_KERNELS = os.environ.get("PAGODA_INT4_KERNELS", "1") == "1"
# Products with at most this many rows run the int4 GEMV (the weight streamed once, dequantized in
# registers), more rows the dequantizing GEMM; PAGODA_INT4_GEMV_MAX_M overrides it (0: always the GEMM; at most
# GEMV_MAX_M). 2 from the H200 (session 19, one layer's four products of the 8B shape): the GEMV took 85 us at
# M = 1 and 115 us at M = 2, but 540 us at M = 4, where the tl.dot GEMM takes ~218 us (measured at M = 16).
INT4_GEMV_USE_MAX_M = min(GEMV_MAX_M, int(os.environ.get("PAGODA_INT4_GEMV_MAX_M", "2")))
# Whether the int4 GEMV takes a pending RMSNorm (+ residual) into its prologue; PAGODA_INT4_FUSE_NORM=0 runs the
# RMSNorm kernel first and the GEMV's plain or gated form. Off by default: on the H200 (session 19, W4 with AWQ
# weights, 8B shape) the fused prologue cost 1.87 ms per token (5.147 vs 3.281 ms): it cannot split K, and every
# program redoes the norm's loads and squares in its inner loop. PAGODA_INT4_FUSE_NORM=1 fuses it, for A/B runs.
INT4_FUSE_NORM = os.environ.get("PAGODA_INT4_FUSE_NORM", "0") == "1"


def int4_gemv_applies(x: torch.Tensor) -> bool:
    """Whether a product of x with a repacked int4 weight runs in the int4 GEMV rather than the GEMM: x is
    [M, K] with 1 <= M <= INT4_GEMV_USE_MAX_M. Shapes only, as gemv_applies (CUDA-graph and eager runs of a
    batch take the same path); the device question was settled at load time (only CUDA layers are repacked)."""
    return x.dim() == 2 and 0 < x.shape[0] <= INT4_GEMV_USE_MAX_M


@dataclass(frozen=True)
class Int4GemvLaunch:
    block_n: int  # output features per program
    block_k: int  # input features per loop iteration, a multiple of 128 (whole chunks of the layout)
    split_k: int  # K ranges reduced by a second kernel (1: none)
    num_warps: int
    num_stages: int


# PAGODA_INT4_GEMV_TABLE names a JSON file of timed launches (tests/kernels/bench_int4.py --sweep --write-table
# FILE: rows {"form", "m", "n", "k", "block_n", "block_k", "split_k", "num_warps", "num_stages"}), read once; a
# (form, m, n, k) found there overrides the heuristic, for A/B runs of a sweep. form "plain" (y = x Wᵀ), "gated"
# (the SiLU·mul of a [gate | up] weight; n = the gated output's features) or "norm" (an RMSNorm prologue).
INT4_GEMV_FORMS = ("plain", "gated", "norm")


def load_int4_gemv_table(path: str) -> dict[tuple[str, int, int, int], Int4GemvLaunch]:
    """The rows of a sweep's JSON table (see PAGODA_INT4_GEMV_TABLE above) as launches; ValueError naming a bad row."""
    import json

    with open(path) as f:
        rows = json.load(f)
    table = {}
    for row in rows:
        try:
            if row["form"] not in INT4_GEMV_FORMS:
                raise ValueError(f"form must be one of {INT4_GEMV_FORMS}")
            launch = Int4GemvLaunch(int(row["block_n"]), int(row["block_k"]), int(row["split_k"]),
                                    int(row["num_warps"]), int(row["num_stages"]))
            table[(row["form"], int(row["m"]), int(row["n"]), int(row["k"]))] = launch
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad int4 GEMV table row {row!r}: {exc}") from None
    return table


@functools.lru_cache(maxsize=1)
def _int4_gemv_table() -> dict[tuple[str, int, int, int], Int4GemvLaunch]:
    path = os.environ.get("PAGODA_INT4_GEMV_TABLE")
    return load_int4_gemv_table(path) if path else {}


INT4_GEMV_MAX_SPLIT = 8
INT4_GEMV_TARGET_WAVES = 8  # split K until about this many programs per SM (at most INT4_GEMV_MAX_SPLIT ranges)


def int4_gemv_launch(m: int, n: int, k: int, form: str = "plain") -> Int4GemvLaunch:
    """Tiles for the int4 GEMV: the launch of PAGODA_INT4_GEMV_TABLE's file for (form, m, n, k) when there is one,
    else a heuristic from the H200 sweeps of session 19 (docs/benchmarks.md; tests/kernels/bench_int4.py --sweep on
    Llama-3-8B's four shapes at M = 1): 64 rows x 256 inputs per program, 4 warps, the loop's loads pipelined over
    2 stages (against 1 stage: 2x faster on every shape; the landscape around it is flat within ~8 %: 128 x 128,
    128 x 256 with 8 warps, 3 stages), and K split until ~INT4_GEMV_TARGET_WAVES programs per SM (at most
    INT4_GEMV_MAX_SPLIT ranges, each of at least two iterations). block_k // 128 * 16 < 32 * num_warps keeps x's
    plane loads in the weight's layout (no shared memory). m = 3, 4 keep the earlier tiles, 16 x 1024 with 8 warps
    and one stage (one accumulator per x row: more rows per thread would spill; 16 x 512 with 4 warps and 2 stages
    took 151.6 us on down_proj at M = 4 against 126.8 us for these in session 18, and the layers send those rows
    to the GEMM anyway: INT4_GEMV_USE_MAX_M). The fused forms never split (int4_gemv ignores split_k for them)."""
    tuned = _int4_gemv_table().get((form, m, n, k))
    if tuned is not None:
        return tuned
    block_n, block_k, warps, stages = (64, 256, 4, 2) if m <= 2 else (16, 1024, 8, 1)
    while block_k > 128 and block_k // 2 >= k:
        block_k //= 2
    return Int4GemvLaunch(block_n, block_k, _int4_split(n, k, block_n, block_k), num_warps=warps, num_stages=stages)


def _int4_split(n: int, k: int, block_n: int, block_k: int) -> int:
    """K ranges for n rows in programs of block_n: doubled until ~INT4_GEMV_TARGET_WAVES programs per SM, at most
    INT4_GEMV_MAX_SPLIT, each range at least two iterations of block_k."""
    programs = -(-n // block_n)
    split_k = 1
    while (programs * split_k < INT4_GEMV_TARGET_WAVES * DEFAULT_SM_COUNT and split_k < INT4_GEMV_MAX_SPLIT
           and k // (split_k * 2) >= 2 * block_k):
        split_k *= 2
    return split_k


# Products of 3 to INT4_SMALL_M_USE_MAX_M rows (more than the GEMV takes) may run the operand-swapped small-batch
# GEMM (int4_gemm_small_m.py: the weight tile first in one deep dot, K split over programs) instead of
# int4_gemm.py. Off (0) until timed on the GPU (tests/kernels/bench_int4.py --gemm-rows 4,8,16 --sweep): at batch 4
# the 8B shape's step took 7.30 ms on int4_gemm.py against ~3.3 ms at batch 1 (session 19). PAGODA_INT4_SMALL_M sets
# it (at most INT4_SMALL_M_MAX).
INT4_SMALL_M_MAX = 16
INT4_SMALL_M_USE_MAX_M = min(INT4_SMALL_M_MAX, int(os.environ.get("PAGODA_INT4_SMALL_M", "0")))


def int4_small_m_applies(m: int) -> bool:
    """Whether an int4 product with m rows (more than the GEMV takes) runs the small-batch GEMM."""
    return m <= INT4_SMALL_M_USE_MAX_M


@dataclass(frozen=True)
class Int4SmallMLaunch:
    block_n: int  # weight rows (output features) per program, power of two >= 16
    block_k: int  # inputs per iteration, a power of two multiple of 128
    split_k: int  # K ranges reduced by a second kernel (1: none)
    num_warps: int
    num_stages: int


def int4_gemm_small_m_launch(m: int, n: int, k: int) -> Int4SmallMLaunch:
    """Tiles for the small-batch int4 GEMM. Not yet timed on the GPU: 64 rows x 256 inputs (the GEMV's sweep
    winner's tile), 4 warps, 2 stages, K split toward ~INT4_GEMV_TARGET_WAVES programs per SM as the GEMV does."""
    block_n, block_k = 64, 256
    while block_k > 128 and block_k // 2 >= k:
        block_k //= 2
    return Int4SmallMLaunch(block_n, block_k, _int4_split(n, k, block_n, block_k), num_warps=4, num_stages=2)


# Products with at least INT4_DEQUANT_MIN_M rows (prefill) dequantize the weight into a per-device workspace
# with int4_dequant.py (~2.5 bytes per weight: ~70 us for Llama-3-8B's gate_up on the H200) and run cuBLAS on
# it; fewer rows run the tl.dot GEMM (int4_gemm.py), which reads only the packed weight. The estimate: the GEMM
# ran at ~200 TFLOP/s against cuBLAS bf16's ~800 (M = 256, 2048), so the dequant path wins once
# 2·M·N·K / 800e12 + 2.5·N·K / 4.25e12 < 2·M·N·K / 200e12, i.e. M > ~20: 32 until swept on the GPU.
# PAGODA_INT4_DEQUANT_MIN_M overrides it (0: never dequantize) for A/B runs. Under CUDA-graph capture the
# GEMM is always used (the workspace may grow, which a captured graph must not see).
INT4_DEQUANT_MIN_M = int(os.environ.get("PAGODA_INT4_DEQUANT_MIN_M", "32"))
INT4_DEQUANT_BLOCK_N = 32  # rows per dequant program
INT4_DEQUANT_BLOCK_CH = 4  # 128-input chunks per dequant program
INT4_DEQUANT_NUM_WARPS = 4


def int4_dequant_applies(m: int) -> bool:
    """Whether an int4 product with m rows (more than the GEMV takes) dequantizes to a workspace + cuBLAS."""
    return INT4_DEQUANT_MIN_M > 0 and m >= INT4_DEQUANT_MIN_M


@dataclass(frozen=True)
class Int4GemmLaunch:
    block_m: int  # rows per program, power of two >= 16
    block_n: int  # output features per program, power of two >= 16
    num_warps: int
    num_stages: int


def int4_gemm_launch(m: int, n: int, k: int) -> Int4GemmLaunch:
    """Tiles for the dequantizing GEMM (one 128-input chunk per iteration, eight 16-deep tl.dots). Not yet swept
    on the GPU: small M keeps the weight read once per column block, large M takes 128 x 128 tiles."""
    block_m = min(128, max(16, next_power_of_2(m)))
    block_n = 128 if m > 64 else 64
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    return Int4GemmLaunch(block_m, block_n, num_warps, num_stages=3)


# --- sampling (exponential race) -------------------------------------------------------------------
# CUDA batches without top-k/top-p/min-p sample with one fused kernel (pagoda.kernels.sample);
# PAGODA_FUSED_SAMPLING=0 keeps them on the torch path (same q), for A/B runs.
FUSED_SAMPLING = os.environ.get("PAGODA_FUSED_SAMPLING", "1") == "1"
# Not yet swept on the GPU: 2048 / (8 warps x 32 lanes) = 8 entries per thread per iteration.
SAMPLE_BLOCK_V = 2048  # vocab entries per loop iteration of one program (less for a smaller vocab)
SAMPLE_NUM_WARPS = 8
SAMPLE_MAX_SPLITS = 32  # most vocab splits (programs) per row
# Batches whose random rows all have a top-k of at most this many tokens sample from their top-k
# candidates only (pagoda.sample.top_k_path); larger k take the sort over the whole vocabulary.
SAMPLE_TOP_K_PATH_MAX_K = int(os.environ.get("PAGODA_TOP_K_PATH_MAX_K", "1024"))
# Top-p/min-p threshold search (pagoda.kernels.top_p): vocab entries per tile; not swept yet.
TOP_P_BLOCK_V = 1024


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


# --- cascade attention: the shared-prefix pass (pagoda.kernels.cascade_attention) --------------------
@dataclass(frozen=True)
class PrefixAttentionLaunch:
    block_m: int  # flattened (token, group head) rows per program, power of two >= 16
    tile_n: int  # prefix KV positions per inner iteration, power of two >= 16
    head_pad: int  # head size rounded up to a power of two (>= 16)
    num_warps: int
    num_stages: int


PREFIX_TILES_ENV = "PAGODA_PREFIX_ATTENTION_TILES"


def prefix_attention_launch(*, head_size: int, device: torch.device) -> PrefixAttentionLaunch:
    """Tiles for the prefix pass. It depends on the head size and device only, so the grid
    (cdiv(num_tokens * group, block_m), num_kv_heads) is a function of T, H, Hkv. On CUDA: 128-row
    tensor-core tiles (64 x 32 at head sizes >= 256, to bound the fp32 accumulator), 64 KV positions
    per step, 4 warps, 2 stages: the best of tests/kernels/bench_cascade.py --sweep on the H200 at W8's
    shape (55.9 us against 78.7 us with 8 warps; head size 128). Elsewhere (Triton's interpreter): 16 x 32, which
    keeps CPU tests fast."""
    head_pad = max(16, next_power_of_2(head_size))
    if device.type != "cuda":
        return PrefixAttentionLaunch(16, 32, head_pad, 4, 1)
    override = os.environ.get(PREFIX_TILES_ENV)
    if override:  # tests/kernels/bench_cascade.py --sweep finds candidates; the suite can try them end to end
        try:
            block_m, tile_n, warps, stages = (int(x) for x in override.split(","))
        except ValueError:
            raise ValueError(f"{PREFIX_TILES_ENV} takes block_m,tile_n,num_warps,num_stages, got {override!r}") from None
        return PrefixAttentionLaunch(block_m, tile_n, head_pad, warps, stages)
    if head_pad >= 256:
        return PrefixAttentionLaunch(64, 32, head_pad, 8, 2)
    return PrefixAttentionLaunch(128, 64, head_pad, 4, 2)


PREFIX_SPLITS_ENV = "PAGODA_PREFIX_ATTENTION_SPLITS"


def prefix_attention_splits(*, num_programs: int, device: torch.device) -> int:
    """Split-KV count of the prefix pass for `num_programs` (row blocks x KV heads) programs: 1 (not yet
    measured to pay: tests/kernels/bench_cascade.py --prefix-splits times it), or PAGODA_PREFIX_ATTENTION_SPLITS.
    A host-side choice on ints, so a CUDA graph and an eager step of one size split alike."""
    override = os.environ.get(PREFIX_SPLITS_ENV)
    if not override:
        return 1
    if not override.isdigit() or int(override) < 1:
        raise ValueError(f"{PREFIX_SPLITS_ENV} must be a positive integer, got {override!r}")
    return int(override)
