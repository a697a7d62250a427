"""Cascade (shared-prefix) attention, the prefix pass (Triton), with a torch reference.

When the requests of a step share their first P blocks of KV (one system prompt, prefix caching), the
shared keys/values are read once for all query rows: `prefix_attention` attends every query row to the
P * block_size prefix positions without a mask (every query sits after the prefix), and
`paged_attention(..., prefix=PrefixState(prefix_blocks, out, lse))` then covers each request's own
positions [P * block_size, seq_len), its online softmax seeded with this state (no merge kernel).

Shapes and conventions (layouts are paged_attention.py's):
- query [T, H, D] (fp32, fp16 or bf16, already rotated; contiguous in D), kv_cache [2, num_blocks,
  block_size, Hkv, D] (also FP8 with k_scale / v_scale), prefix_block_table int32 [>= P] (a block-table
  row whose first P entries are the shared blocks), prefix_blocks int32 [1] on the device holding P.
- out float32 [T, H, D]: the normalised prefix attention (acc / l), v_scale applied for an FP8 cache.
- lse float32 [T, H]: m + log2(l) in the kernel's base-2 scaled domain, i.e.
  log2(sum_j exp2(q . k_j * scale * k_scale * log2 e)) over the prefix positions j.
  So out = sum_j exp2(s_j - lse) v_j with s_j that scaled score.

Kernel design: one program per BLOCK_M rows of the flattened (token, head of one GQA group) rows,
row r = token * GROUP + g for query head kv_head * GROUP + g, times one KV head; each prefix K/V tile
of TILE_N positions (gathered through prefix_block_table with paged_attention.attend_tile) is loaded
once for BLOCK_M rows spanning many requests.

Split-KV over the prefix (num_splits S > 1, for steps with few rows: few programs otherwise): S runs
of prefix tiles are computed by separate programs, which store unnormalised partials (m, l, acc);
`_merge_splits_kernel` combines them into out / lse (empty runs weigh 0).

Invariants: P is read from prefix_blocks on the device and the grid (cdiv(T * GROUP, BLOCK_M), Hkv, S)
depends on T, H, Hkv and S only, so a CUDA graph captured once replays with any P. Only the first P
entries of prefix_block_table are read. With P == 0 every program returns at once: out / lse are left
unwritten (torch.empty) and consumers skip them. Rows of padding tokens are computed
like any other (the query rows are all attended; nothing is written outside out / lse).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.paged_attention import _LOG2E, attend_tile, check_shapes


@triton.jit
def _prefix_attn_kernel(
    out_ptr, lse_ptr, q_ptr, k_cache_ptr, v_cache_ptr, prefix_bt_ptr, prefix_blocks_ptr,
    part_m_ptr, part_l_ptr, part_acc_ptr,
    scale_log2, v_scale, num_rows, num_heads, num_tokens,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_lt, stride_lh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, TILE_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    IEEE_DOT: tl.constexpr, FP8: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    kv_end = tl.load(prefix_blocks_ptr) * BLOCK_SIZE
    if kv_end == 0:
        return  # nothing shared: consumers skip out / lse (a CUDA graph of a step without cascade)
    kv_head = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < num_rows
    tok = (rows // GROUP).to(tl.int64)
    head = kv_head * GROUP + rows % GROUP
    offs_d = tl.arange(0, HEAD_PAD)
    d_mask = offs_d < HEAD_SIZE
    q = tl.load(
        q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
        mask=row_valid[:, None] & d_mask[None, :],
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    kv_head64 = kv_head.to(tl.int64)
    num_tiles = tl.cdiv(kv_end, TILE_N)
    if NUM_SPLITS == 1:
        tile_lo = 0
        tile_hi = num_tiles
    else:
        per_split = tl.cdiv(num_tiles, NUM_SPLITS)
        tile_lo = tl.program_id(2) * per_split
        tile_hi = tl.minimum(tile_lo + per_split, num_tiles)
    for t in range(tile_lo, tile_hi):
        offs_n = t * TILE_N + tl.arange(0, TILE_N)
        n_valid = offs_n < kv_end
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, prefix_bt_ptr, offs_n, n_valid,
                                    n_valid[None, :], kv_head64, offs_d, d_mask, stride_kb, stride_ks, stride_kh,
                                    stride_vb, stride_vs, stride_vh, scale_log2, BLOCK_SIZE, IEEE_DOT, FP8)
    if FP8:
        acc = acc * v_scale
    if NUM_SPLITS == 1:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        tl.store(
            out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
            acc / l_safe[:, None],
            mask=row_valid[:, None] & d_mask[None, :],
        )
        tl.store(lse_ptr + tok * stride_lt + head * stride_lh, m_i + tl.log2(l_safe), mask=row_valid)
    else:  # unnormalised partials; an empty split keeps m -1e30, l 0 (weight 0 in the merge)
        part = tl.program_id(2).to(tl.int64) * num_tokens * num_heads + tok * num_heads + head
        tl.store(part_m_ptr + part, m_i, mask=row_valid)
        tl.store(part_l_ptr + part, l_i, mask=row_valid)
        tl.store(part_acc_ptr + part[:, None] * HEAD_PAD + offs_d[None, :], acc, mask=row_valid[:, None])


@triton.jit
def _merge_splits_kernel(
    out_ptr, lse_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, prefix_blocks_ptr, num_heads, num_tokens,
    stride_ot, stride_oh, stride_lt, stride_lh,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    if tl.load(prefix_blocks_ptr) == 0:
        return
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    s_mask = offs_s < NUM_SPLITS
    part = offs_s.to(tl.int64) * num_tokens * num_heads + tok * num_heads + head
    m = tl.load(part_m_ptr + part, mask=s_mask, other=-1.0e30)
    l = tl.load(part_l_ptr + part, mask=s_mask, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.exp2(m - m_max)
    total = tl.sum(w * l, 0)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_PAD + offs_d[None, :], mask=s_mask[:, None], other=0.0)
    total_safe = tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + tok * stride_ot + head * stride_oh + offs_d, tl.sum(acc * w[:, None], 0) / total_safe,
             mask=offs_d < HEAD_SIZE)
    tl.store(lse_ptr + tok * stride_lt + head * stride_lh, m_max + tl.log2(total_safe))


def prefix_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    prefix_block_table: torch.Tensor,
    prefix_blocks: torch.Tensor,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out float32 [T, H, D], lse float32 [T, H]) of every query row over the first
    prefix_blocks[0] blocks of prefix_block_table, unmasked (see the module docstring). `num_splits`
    cuts the prefix's tiles into that many runs of separate programs, merged after (None:
    tuning.prefix_attention_splits)."""
    num_tokens, num_heads, head_size, block_size, num_kv_heads = check_shapes(query, kv_cache)
    if prefix_block_table.dim() != 1 or prefix_blocks.numel() != 1:
        raise ValueError("prefix_block_table must be 1-D and prefix_blocks hold one value")
    if query.stride(-1) != 1:
        query = query.contiguous()
    if kv_cache.stride(-1) != 1:
        raise ValueError("kv_cache must be contiguous in the head dimension")
    if prefix_block_table.stride(0) != 1:
        prefix_block_table = prefix_block_table.contiguous()
    out = torch.empty(num_tokens, num_heads, head_size, dtype=torch.float32, device=query.device)
    lse = torch.empty(num_tokens, num_heads, dtype=torch.float32, device=query.device)
    if num_tokens == 0:
        return out, lse
    if not tuning.kv_format(kv_cache.dtype).fp8:
        k_scale = v_scale = 1.0
    launch = tuning.prefix_attention_launch(head_size=head_size, device=query.device)
    group = num_heads // num_kv_heads
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    row_blocks = triton.cdiv(num_tokens * group, launch.block_m)
    splits = num_splits or tuning.prefix_attention_splits(num_programs=row_blocks * num_kv_heads, device=query.device)
    if splits > 1:
        n_part = splits * num_tokens * num_heads
        part_m = torch.empty(n_part, dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty(n_part * launch.head_pad, dtype=torch.float32, device=query.device)
    else:
        part_m = part_l = part_acc = out  # unused
    _prefix_attn_kernel[(row_blocks, num_kv_heads, splits)](
        out, lse, query, k_cache, v_cache, prefix_block_table, prefix_blocks, part_m, part_l, part_acc,
        float(scale) * float(k_scale) * _LOG2E, float(v_scale), num_tokens * group, num_heads, num_tokens,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HEAD_SIZE=head_size, HEAD_PAD=launch.head_pad, GROUP=group,
        BLOCK_M=launch.block_m, TILE_N=launch.tile_n, BLOCK_SIZE=block_size,
        IEEE_DOT=query.dtype == torch.float32, FP8=tuning.kv_format(kv_cache.dtype).fp8, NUM_SPLITS=splits,
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    if splits > 1:
        _merge_splits_kernel[(num_tokens, num_heads)](
            out, lse, part_m, part_l, part_acc, prefix_blocks, num_heads, num_tokens,
            out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
            HEAD_SIZE=head_size, HEAD_PAD=launch.head_pad, NUM_SPLITS=splits,
            SPLITS_PAD=tuning.next_power_of_2(splits), num_warps=4 if launch.head_pad >= 128 else 2,
        )
    return out, lse


def prefix_attention_ref(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    prefix_block_table: torch.Tensor,
    prefix_blocks: torch.Tensor | int,
    scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference in fp32 with explicit matmuls: K/V of the first P blocks gathered and dequantized
    (tuning.dequantize_kv), scores in the base-2 scaled domain s = q.k * scale * log2 e (k_scale inside
    the dequantized k), lse = log2 sum_j exp2(s_j), out = sum_j exp2(s_j - lse) v_j. P == 0: out 0, lse -inf."""
    num_prefix = int(prefix_blocks.reshape(-1)[0]) if torch.is_tensor(prefix_blocks) else int(prefix_blocks)
    num_tokens, num_heads, head_size = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    positions = torch.arange(num_prefix * block_size, device=kv_cache.device)
    blocks = prefix_block_table.to(kv_cache.device).long()[positions // block_size]
    slots = positions % block_size
    k = tuning.dequantize_kv(kv_cache[0, blocks, slots], k_scale).repeat_interleave(group, dim=1)  # [L, H, D]
    v = tuning.dequantize_kv(kv_cache[1, blocks, slots], v_scale).repeat_interleave(group, dim=1)
    q = query.float().to(kv_cache.device)
    s = torch.matmul(q.transpose(0, 1), k.permute(1, 2, 0)) * (float(scale) * _LOG2E)  # [H, T, L]
    lse = torch.logsumexp(s * math.log(2.0), dim=-1) / math.log(2.0)  # [H, T]
    probs = torch.exp2(s - lse[..., None]) if num_prefix > 0 else torch.zeros_like(s)
    out = torch.matmul(probs, v.transpose(0, 1)).transpose(0, 1)  # [T, H, D]
    return out.contiguous(), lse.transpose(0, 1).contiguous()
