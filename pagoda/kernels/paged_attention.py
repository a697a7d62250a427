"""Paged attention for a flat batch mixing prefill chunks and decodes (Triton), with a torch reference.

Shapes and layout (the contract of pagoda.attention.backend):
- query [num_tokens, num_heads, head_size]; out has the same shape and dtype (fp16, bf16 or fp32).
- kv_cache [2, num_blocks, block_size, num_kv_heads, head_size]; [0] keys, [1] values, already
  holding this step's keys/values. Slot = block * block_size + offset.
- query_start_loc int32 [num_reqs + 1], seq_lens int32 [num_reqs], block_tables int32
  [num_reqs, max_blocks]. Query j of request i sits at position seq_lens[i] - query_len_i + j and
  attends to positions 0 ..= its own (its cached prefix and the chunk's earlier tokens).

Kernel design:
- One program handles BLOCK_M rows = BLOCK_Q query tokens x GROUP query heads that share one KV
  head, so each K/V tile is loaded once for the whole GQA group. Programs are laid out as
  (num_tokens // BLOCK_Q + num_reqs) "query blocks" x num_kv_heads; a program finds its request by
  binary search over query_start_loc, so the grid depends only on sizes, not on data (CUDA-graph safe).
- Keys/values are read in tiles of TILE_N positions gathered through block_tables, so any block size
  works (TILE_N and block_size are independent). Head sizes are padded to a power of two with masks.
- Softmax is online, in fp32 and base 2; q·k and p·v accumulate in fp32 (IEEE for fp32 inputs).
- With tuning.ATTN_UNMASKED_TILES (PAGODA_ATTN_UNMASKED_TILES=1; off until timed on the GPU) the tile loop
  runs in two parts: the tiles wholly at or before the block's first query position (every row sees every
  position: no load masks, no causal select), then the rest (the causal diagonal and the chunk's end) with
  both. Results are the same as one masked loop: a masked score is exactly -inf.
- Split-KV (flash-decoding): with NUM_SPLITS > 1 each query block's visible KV range is cut into
  NUM_SPLITS equal runs of tiles computed by separate programs, which write unnormalised partial
  outputs plus running max/sum; `_reduce_splits_kernel` combines them. Empty splits write max=-1e30,
  sum=0 and so get weight 0.

- FP8 KV cache (float8_e4m3fn / float8_e5m2, FP8=True): tiles are loaded as fp8, widened exactly to the
  query dtype (through fp32: Triton's interpreter widens some e5m2 values wrongly) and multiplied as
  they are; k_scale is folded into the softmax scale and v_scale into the output (acc · v_scale, before
  normalising or storing split partials), which equals dequantize-then-attend up to fp32 rounding.

- Cascade (shared-prefix) attention, `prefix=PrefixState(prefix_blocks, out, lse)` (CASCADE=True): the
  first P = prefix_blocks[0] blocks of every block-table row (read on the device, so a CUDA graph replays
  with any P) were attended already by pagoda.kernels.cascade_attention.prefix_attention, for all rows at
  once. Each request then covers only positions [P * block_size, seq_len) (absolute positions and causal
  mask unchanged; split-KV cuts the suffix's tiles), and the program holding the first suffix tile (split
  0) starts its online softmax from its rows' prefix state: m = lse, l = 1, acc = out (/ v_scale for an FP8
  cache, as acc is multiplied by v_scale after the loop). That equals attention over [0, seq_len) up to
  fp32 rounding, provided every real request has seq_len - query_len >= P * block_size. Requests below
  that are CUDA-graph padding (outputs unspecified): their range is clamped at 0 tiles, so nothing is read
  past their row. With P == 0 no seed is applied and the result is bitwise that of prefix=None.

Invariants: rows outside the batch (padding tokens past query_start_loc[-1]) are never written;
masked K/V loads return 0, so stale or NaN cache contents past a request's length never leak in.
A cache in the query's dtype takes exactly the code path it took before FP8 caches existed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning

_LOG2E = 1.4426950408889634


class PrefixState(NamedTuple):
    """The shared prefix of a cascade step: prefix_blocks int32 [1] on the device (P), and
    prefix_attention's out float32 [T, H, D] (normalised, v_scale applied) and lse float32 [T, H]
    (base 2, scaled: log2 sum_j exp2(q.k_j * scale * k_scale * log2 e)) for the step's query rows."""

    prefix_blocks: torch.Tensor
    out: torch.Tensor
    lse: torch.Tensor


@triton.jit
def _find_seq_idx(query_start_loc_ptr, target, num_reqs, BLOCK_Q: tl.constexpr):
    """Largest request i with query_start_loc[i] // BLOCK_Q + i <= target."""
    lo: tl.int32 = 0
    hi: tl.int32 = num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        val = tl.load(query_start_loc_ptr + mid)
        if val // BLOCK_Q + mid <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, offs_n, n_valid, visible, kv_head64,
                offs_d, d_mask, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, scale_log2,
                BLOCK_SIZE: tl.constexpr, IEEE_DOT: tl.constexpr, FP8: tl.constexpr, MASKED: tl.constexpr = True):
    """One step of the online softmax over the KV positions `offs_n` (gathered through the block-table
    row `bt_row`; `n_valid` masks the loads, `visible` [rows, positions] the scores): returns the
    updated running max (base 2), sum and unnormalised output. FP8: the cache holds fp8 values, widened
    to q's dtype here (their scales are the caller's: in scale_log2 and on the final output).
    MASKED=False: every position is valid and visible to every row (a tile below the causal diagonal), so
    `n_valid` and `visible` are not applied (pass anything)."""
    if MASKED:
        blk = tl.load(bt_row + offs_n // BLOCK_SIZE, mask=n_valid, other=0).to(tl.int64)
        k_mask = n_valid[None, :] & d_mask[:, None]
        v_mask = n_valid[:, None] & d_mask[None, :]
    else:  # only the head-size padding masks the loads (none when the head size is a power of two)
        blk = tl.load(bt_row + offs_n // BLOCK_SIZE).to(tl.int64)
        k_mask = d_mask[:, None]
        v_mask = d_mask[None, :]
    slot = (offs_n % BLOCK_SIZE).to(tl.int64)
    k = tl.load(
        k_cache_ptr + blk[None, :] * stride_kb + slot[None, :] * stride_ks + kv_head64 * stride_kh
        + offs_d[:, None],
        mask=k_mask,
        other=0.0,
    )
    if FP8:
        k = k.to(tl.float32).to(q.dtype)
    if IEEE_DOT:
        qk = tl.dot(q, k, input_precision="ieee")
    else:
        qk = tl.dot(q, k)
    qk = qk * scale_log2
    if MASKED:
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(
        v_cache_ptr + blk[:, None] * stride_vb + slot[:, None] * stride_vs + kv_head64 * stride_vh
        + offs_d[None, :],
        mask=v_mask,
        other=0.0,
    )
    if FP8:
        v = v.to(tl.float32).to(q.dtype)
    if IEEE_DOT:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc * alpha[:, None] + pv


@triton.jit
def _paged_attn_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    part_acc_ptr, part_m_ptr, part_l_ptr,
    prefix_blocks_ptr, prefix_out_ptr, prefix_lse_ptr,
    scale_log2, v_scale, num_reqs, num_heads,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt, stride_pt, stride_ph, stride_lt, stride_lh,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE_DOT: tl.constexpr, FP8: tl.constexpr,
    CASCADE: tl.constexpr, UNMASKED_TILES: tl.constexpr,
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq_idx = _find_seq_idx(query_start_loc_ptr, q_block, num_reqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq_idx)
    q_len = tl.load(query_start_loc_ptr + seq_idx + 1) - q_start
    local_block = q_block - (q_start // BLOCK_Q + seq_idx)
    if local_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq_idx)
    ctx_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_PAD)
    q_local = local_block * BLOCK_Q + offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    row_valid = (offs_m < BLOCK_Q * GROUP) & (q_local < q_len)
    q_pos = ctx_len + q_local
    d_mask = offs_d < HEAD_SIZE
    tok = (q_start + q_local).to(tl.int64)
    q = tl.load(
        q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
        mask=row_valid[:, None] & d_mask[None, :],
        other=0.0,
    )

    # KV positions visible to any row of this block: [kv_start, kv_end) (kv_start > 0: cascade suffix).
    kv_end = ctx_len + tl.minimum((local_block + 1) * BLOCK_Q, q_len)
    if CASCADE:
        num_prefix = tl.load(prefix_blocks_ptr)
        kv_start = num_prefix * BLOCK_SIZE
        num_tiles = tl.cdiv(tl.maximum(kv_end - kv_start, 0), TILE_N)
    else:
        kv_start = 0
        num_tiles = tl.cdiv(kv_end, TILE_N)
    if NUM_SPLITS == 1:
        tile_lo = 0
        tile_hi = num_tiles
    else:
        per_split = tl.cdiv(num_tiles, NUM_SPLITS)
        tile_lo = split * per_split
        tile_hi = tl.minimum(tile_lo + per_split, num_tiles)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    if CASCADE:
        # Seed the split holding the first suffix tile with the prefix state (none when P == 0).
        seed = (num_prefix > 0) & (split == 0)
        seed_rows = row_valid & (offs_m < BLOCK_M * seed.to(tl.int32))  # (not `& seed`: the interpreter's
        # block & scalar bool is an int mask)
        lse = tl.load(prefix_lse_ptr + tok * stride_lt + head * stride_lh, mask=seed_rows, other=-1.0e30)
        o_pre = tl.load(
            prefix_out_ptr + tok[:, None] * stride_pt + head[:, None] * stride_ph + offs_d[None, :],
            mask=seed_rows[:, None] & d_mask[None, :],
            other=0.0,
        )
        if FP8:
            o_pre = o_pre / v_scale
        m_i = tl.where(seed, lse, m_i)
        l_i = tl.where(seed, 1.0, l_i)
        acc = tl.where(seed, o_pre, acc)
    bt_row = block_tables_ptr + seq_idx.to(tl.int64) * stride_bt
    kv_head64 = kv_head.to(tl.int64)

    num_full = 0
    if UNMASKED_TILES:
        # Tiles wholly at or before the block's first query position are visible to every row: no masks there.
        first_q_pos = ctx_len + local_block * BLOCK_Q
        num_full = tl.maximum(first_q_pos + 1 - kv_start, 0) // TILE_N
        for t in range(tile_lo, tl.minimum(tile_hi, num_full)):
            offs_n = kv_start + t * TILE_N + tl.arange(0, TILE_N)
            m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, offs_n, offs_n, offs_n,
                                        kv_head64, offs_d, d_mask, stride_kb, stride_ks, stride_kh,
                                        stride_vb, stride_vs, stride_vh, scale_log2, BLOCK_SIZE, IEEE_DOT, FP8,
                                        MASKED=False)
    for t in range(tl.maximum(tile_lo, num_full), tile_hi):
        offs_n = kv_start + t * TILE_N + tl.arange(0, TILE_N)
        n_valid = offs_n < kv_end
        visible = (offs_n[None, :] <= q_pos[:, None]) & n_valid[None, :]
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, offs_n, n_valid, visible,
                                    kv_head64, offs_d, d_mask, stride_kb, stride_ks, stride_kh,
                                    stride_vb, stride_vs, stride_vh, scale_log2, BLOCK_SIZE, IEEE_DOT, FP8)
    if FP8:
        acc = acc * v_scale

    if NUM_SPLITS == 1:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(
            out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=row_valid[:, None] & d_mask[None, :],
        )
    else:
        part = (tok * num_heads + head) * NUM_SPLITS + split  # [BLOCK_M] int64
        tl.store(part_m_ptr + part, m_i, mask=row_valid)
        tl.store(part_l_ptr + part, l_i, mask=row_valid)
        tl.store(
            part_acc_ptr + part[:, None] * HEAD_PAD + offs_d[None, :],
            acc,
            mask=row_valid[:, None] & (offs_d[None, :] < HEAD_PAD),
        )


@triton.jit
def _reduce_splits_kernel(
    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, query_start_loc_ptr, num_reqs, num_heads,
    stride_ot, stride_oh,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    tok = tl.program_id(0)
    head = tl.program_id(1)
    if tok >= tl.load(query_start_loc_ptr + num_reqs):
        return
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    s_mask = offs_s < NUM_SPLITS
    base = (tok.to(tl.int64) * num_heads + head) * NUM_SPLITS
    m = tl.load(part_m_ptr + base + offs_s, mask=s_mask, other=float("-inf"))
    l = tl.load(part_l_ptr + base + offs_s, mask=s_mask, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.exp2(m - m_max)
    denom = tl.sum(w * l, 0)
    acc = tl.load(
        part_acc_ptr + (base + offs_s)[:, None] * HEAD_PAD + offs_d[None, :],
        mask=s_mask[:, None] & (offs_d[None, :] < HEAD_SIZE),
        other=0.0,
    )
    o = tl.sum(acc * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)
    tl.store(
        out_ptr + tok.to(tl.int64) * stride_ot + head * stride_oh + offs_d,
        o.to(out_ptr.dtype.element_ty),
        mask=offs_d < HEAD_SIZE,
    )


def check_shapes(query: torch.Tensor, kv_cache: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(num_tokens, num_heads, head_size, block_size, num_kv_heads) of a query [T, H, D] over a cache
    [2, blocks, block_size, Hkv, D]; ValueError when they do not fit."""
    num_tokens, num_heads, head_size = query.shape
    _, _, block_size, num_kv_heads, cache_head_size = kv_cache.shape
    if cache_head_size != head_size or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"query heads/size {num_heads}/{head_size} do not fit "
            f"cache kv heads/size {num_kv_heads}/{cache_head_size}"
        )
    return num_tokens, num_heads, head_size, block_size, num_kv_heads


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata,
    scale: float,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    prefix: PrefixState | tuple | None = None,
) -> torch.Tensor:
    """Attention of every query row over its request's paged keys/values; matches
    `paged_attention_reference`. `metadata` is an AttentionMetadata (duck-typed: needs num_reqs,
    max_query_len, max_seq_len, query_start_loc, seq_lens, block_tables). `num_splits` forces the
    split-KV count (None: heuristic in pagoda.kernels.tuning). An FP8 cache reads as fp8 · k_scale and
    fp8 · v_scale (the scales are unused for a cache in the query's dtype). `prefix`: (prefix_blocks,
    out, lse) from cascade_attention.prefix_attention over the same query, cache and scales; every
    request then skips its first P blocks and resumes from that state (see the module docstring)."""
    num_tokens, num_heads, head_size, block_size, num_kv_heads = check_shapes(query, kv_cache)
    if out is None:
        out = torch.empty_like(query)
    if query.stride(-1) != 1:
        query = query.contiguous()
    if out.stride(-1) != 1 or kv_cache.stride(-1) != 1:
        raise ValueError("out and kv_cache must be contiguous in the head dimension")
    fp8 = tuning.kv_format(kv_cache.dtype).fp8
    if not fp8:
        k_scale = v_scale = 1.0
    num_reqs = int(metadata.num_reqs)
    if num_tokens == 0 or num_reqs == 0:
        return out
    launch = tuning.attention_launch(
        num_reqs=num_reqs,
        num_tokens=num_tokens,
        max_query_len=int(metadata.max_query_len),
        max_seq_len=int(metadata.max_seq_len),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        device=query.device,
        num_splits=num_splits,
    )
    group = num_heads // num_kv_heads
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    block_tables = metadata.block_tables
    splits = launch.num_splits
    if splits > 1:
        n_part = num_tokens * num_heads * splits
        part_acc = torch.empty(n_part * launch.head_pad, dtype=torch.float32, device=query.device)
        part_m = torch.empty(n_part, dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
    else:
        part_acc = part_m = part_l = out  # unused
    if prefix is not None:
        prefix_blocks, prefix_out, prefix_lse = prefix
        if prefix_out.shape != query.shape or prefix_lse.shape != query.shape[:2] or prefix_out.stride(-1) != 1:
            raise ValueError("prefix out/lse must be [T, H, D] (contiguous in D) / [T, H] like the query")
        p_strides = (prefix_out.stride(0), prefix_out.stride(1), prefix_lse.stride(0), prefix_lse.stride(1))
    else:
        prefix_blocks = prefix_out = prefix_lse = out  # unused
        p_strides = (0, 0, 0, 0)
    grid = (num_tokens // launch.block_q + num_reqs, num_kv_heads, splits)
    _paged_attn_kernel[grid](
        out, query, k_cache, v_cache,
        block_tables, metadata.seq_lens, metadata.query_start_loc,
        part_acc, part_m, part_l,
        prefix_blocks, prefix_out, prefix_lse,
        float(scale) * float(k_scale) * _LOG2E, float(v_scale), num_reqs, num_heads,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), *p_strides,
        HEAD_SIZE=head_size, HEAD_PAD=launch.head_pad, GROUP=group,
        BLOCK_M=launch.block_m, BLOCK_Q=launch.block_q, TILE_N=launch.tile_n,
        BLOCK_SIZE=block_size, NUM_SPLITS=splits, IEEE_DOT=query.dtype == torch.float32, FP8=fp8,
        CASCADE=prefix is not None, UNMASKED_TILES=tuning.ATTN_UNMASKED_TILES,
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    if splits > 1:
        _reduce_splits_kernel[(num_tokens, num_heads)](
            out, part_acc, part_m, part_l, metadata.query_start_loc, num_reqs, num_heads,
            out.stride(0), out.stride(1),
            HEAD_SIZE=head_size, HEAD_PAD=launch.head_pad, NUM_SPLITS=splits,
            SPLITS_PAD=tuning.next_power_of_2(splits),
            num_warps=4 if launch.head_pad >= 128 else 2,
        )
    return out


def paged_attention_ref(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: list[int],
    seq_lens: list[int],
    block_tables: torch.Tensor,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Torch reference: per request, gather K/V through the block table (dequantized: tuning.dequantize_kv)
    and run causal softmax attention in fp32 (explicit matmuls, independent of the attention package's
    reference)."""
    block_size, num_kv_heads, head_size = kv_cache.shape[2:]
    group = query.shape[1] // num_kv_heads
    out = torch.zeros_like(query)
    for i, seq_len in enumerate(seq_lens):
        q_start, q_end = query_start_loc[i], query_start_loc[i + 1]
        if q_end == q_start:
            continue
        positions = torch.arange(seq_len, device=query.device)
        blocks = block_tables[i].long()[positions // block_size]
        slots = positions % block_size
        k = tuning.dequantize_kv(kv_cache[0, blocks, slots], k_scale).repeat_interleave(group, dim=1)  # [L, H, D]
        v = tuning.dequantize_kv(kv_cache[1, blocks, slots], v_scale).repeat_interleave(group, dim=1)
        q = query[q_start:q_end].float()  # [q, H, D]
        scores = torch.einsum("qhd,lhd->hql", q, k) * scale
        q_pos = torch.arange(seq_len - (q_end - q_start), seq_len, device=query.device)
        scores = scores.masked_fill(positions[None, None, :] > q_pos[None, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_start:q_end] = torch.einsum("hql,lhd->qhd", probs, v).to(query.dtype)
    return out


def default_scale(head_size: int) -> float:
    return 1.0 / math.sqrt(head_size)
