"""Decode attention in one kernel (Triton): rotary, the KV-cache write and split-KV reduction fused
into paged attention for batches where every request has exactly one new token.

At batch-1 decode a layer's attention used to be three dependent launches (rotary + KV write,
attention, split reduce) of a few microseconds each, dominated by launch and memory latency. Here one
launch does all three. Shapes and layouts are paged_attention.py's and rotary_kv.py's: query [R, H, D],
key and value [R, Hkv, D] (token r is request r's new token; any token/head strides, unit stride in
the last dim); kv_cache [2, num_blocks, block_size, Hkv, D]; seq_lens [R] counts the new token;
slot_mapping int64 [R]; positions int [R] and cos_sin_cache [max_pos, rot_dim] = cat(cos, sin) when
rotary is asked.

Kernel design: grid (request, KV head, split). A program takes the GROUP query heads of one KV head
(one tl.dot tile of BLOCK_M >= 16 rows) and rotates them in registers. Every program reads the cache
only up to the new token's position (exclusive); the program whose split holds that position stores
rotate(k) and v of its KV head at the request's slot for later steps and seeds its online softmax
with them from registers (score q·k, weight 1), so no load waits on a store of this launch. With one split a program normalises and stores its heads. With several, each program stores
its unnormalised partial (max, sum, acc) and bumps a per-(request, KV head) counter with an acq_rel
atomic; the program that arrives last combines the splits in split order, writes the output and resets
the counter to 0 for the next launch (so the counters stay zero between launches, CUDA-graph replays
included). Only the `active` splits that hold tiles of the request take part (count, store, combine);
the rest exit at once, so a graph sized for max_model_len costs little at short contexts.

Invariants:
- Numerics follow paged_attention after rotary_and_write_kv: rotation in fp32 rounded once to the
  query/key dtype (the cache gets what rotary_and_write_kv stores, up to the compiler's FMA
  contraction in the last bit), softmax online in fp32 base 2, the cached tiles in the same order;
  the new token's score is an fp32 dot product taken first instead of inside its tile. A slot < 0 (padding row) writes nothing; its output row is unspecified.
- The counter buffer is per device and zero outside a launch; launches on one device must not run
  concurrently (the engine uses one stream).
- key and value are only read; query is left unrotated.
- An FP8 cache stores the new key and value quantized by k_scale / v_scale exactly as
  kv_cache_write.quantize_fp8 (so as rotary_and_write_kv), the new token's score and value come from
  those fp8 values, and reads dequantize as paged_attention's do (k_scale in the softmax scale, v_scale
  on the output).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.kv_cache_write import fp8_launch_args, quantize_fp8
from pagoda.kernels.paged_attention import attend_tile

_LOG2E = 1.4426950408889634
_counters: dict[tuple[str, int | None], torch.Tensor] = {}
_MIN_COUNTERS = 4096


@triton.jit
def _rotary_operands(cos_sin_ptr, pos, stride_c, offs_d, HALF: tl.constexpr, IS_NEOX: tl.constexpr):
    """Per head dim d: its partner dim, the sign of the partner's term, cos and sin; dims at or past
    2·HALF (partial rotary) get cos 1 and sin 0, so x·cos + sign·partner·sin passes them through."""
    rot = offs_d < 2 * HALF
    if IS_NEOX:  # pairs (p, p + HALF)
        first = offs_d < HALF
        freq = tl.where(first, offs_d, offs_d - HALF)
        partner = tl.where(first, offs_d + HALF, offs_d - HALF)
    else:  # pairs (2p, 2p + 1)
        first = offs_d % 2 == 0
        freq = offs_d // 2
        partner = tl.where(first, offs_d + 1, offs_d - 1)
    sign = tl.where(first, -1.0, 1.0)
    cos = tl.load(cos_sin_ptr + pos * stride_c + freq, mask=rot, other=1.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_c + HALF + freq, mask=rot, other=0.0).to(tl.float32)
    return tl.where(rot, partner, offs_d), sign, cos, sin


@triton.jit
def _decode_attn_kernel(
    out_ptr, q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr,
    block_tables_ptr, seq_lens_ptr, slot_mapping_ptr, positions_ptr, cos_sin_ptr,
    part_acc_ptr, part_m_ptr, part_l_ptr, counter_ptr,
    scale_log2, v_scale, k_inv_scale, v_inv_scale, num_heads, num_kv_heads,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_c,
    stride_cb, stride_cs, stride_ch, stride_bt,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    ROTARY: tl.constexpr, HALF: tl.constexpr, IS_NEOX: tl.constexpr, IEEE_DOT: tl.constexpr,
    FP8: tl.constexpr, FP8_MAX: tl.constexpr, FP8_DROP: tl.constexpr, FP8_MIN_NORMAL: tl.constexpr,
    FP8_MAGIC: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    req64 = req.to(tl.int64)
    kv_head64 = kv_head.to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + req)

    num_tiles = tl.cdiv(seq_len, TILE_N)
    per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    # Splits past the last tile have nothing to do and leave at once: only the `active` ones store
    # partials, count in and are combined (a graph sized for max_model_len runs 32 splits where a
    # short context fills a few).
    active = tl.cdiv(num_tiles, per_split)
    if split < active:
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_PAD)
        d_mask = offs_d < HEAD_SIZE
        head = kv_head * GROUP + offs_m
        row_valid = offs_m < GROUP
        q_mask = row_valid[:, None] & d_mask[None, :]
        q_rows = q_ptr + req64 * stride_qt + head[:, None] * stride_qh
        q = tl.load(q_rows + offs_d[None, :], mask=q_mask, other=0.0)
        if ROTARY:
            pos = tl.load(positions_ptr + req).to(tl.int64)
            partner, sign, cos, sin = _rotary_operands(cos_sin_ptr, pos, stride_c, offs_d, HALF, IS_NEOX)
            q_partner = tl.load(q_rows + partner[None, :], mask=q_mask, other=0.0).to(tl.float32)
            q = (q.to(tl.float32) * cos[None, :] + sign[None, :] * q_partner * sin[None, :]).to(q_ptr.dtype.element_ty)

        tile_lo = split * per_split
        tile_hi = tl.minimum(tile_lo + per_split, num_tiles)
        bt_row = block_tables_ptr + req64 * stride_bt

        # The split whose range holds the new token's position takes its key and value from registers:
        # it stores them in the cache for later steps and starts its softmax with them (p = 1), so no
        # program reads the slot written in this launch. Every split reads the cache up to seq_len - 1.
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
        if (num_tiles - 1) // per_split == split:
            k_row = k_ptr + req64 * stride_kt + kv_head64 * stride_kh
            k_new = tl.load(k_row + offs_d, mask=d_mask, other=0.0)
            if ROTARY:
                k_partner = tl.load(k_row + partner, mask=d_mask, other=0.0).to(tl.float32)
                k_new = (k_new.to(tl.float32) * cos + sign * k_partner * sin).to(k_ptr.dtype.element_ty)
            v_new = tl.load(v_ptr + req64 * stride_vt + kv_head64 * stride_vh + offs_d, mask=d_mask, other=0.0)
            if FP8:  # the values the cache will hold, on the FP8 grid in fp32
                k_new = quantize_fp8(k_new, k_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
                v_new = quantize_fp8(v_new, v_inv_scale, FP8_MAX, FP8_DROP, FP8_MIN_NORMAL, FP8_MAGIC)
            slot = tl.load(slot_mapping_ptr + req).to(tl.int64)
            if slot >= 0:
                dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + kv_head64 * stride_ch
                tl.store(k_cache_ptr + dst + offs_d, k_new.to(k_cache_ptr.dtype.element_ty), mask=d_mask)
                tl.store(v_cache_ptr + dst + offs_d, v_new.to(v_cache_ptr.dtype.element_ty), mask=d_mask)
            # Scores and values as the cache holds them (its dtype; FP8 unscaled), products in fp32.
            k_new = k_new.to(k_cache_ptr.dtype.element_ty).to(tl.float32)
            m_i = tl.sum(q.to(tl.float32) * k_new[None, :], 1) * scale_log2
            l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32) + \
                v_new.to(v_cache_ptr.dtype.element_ty).to(tl.float32)[None, :]

        cached_len = seq_len - 1
        for t in range(tile_lo, tile_hi):
            offs_n = t * TILE_N + tl.arange(0, TILE_N)
            n_valid = offs_n < cached_len
            m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, offs_n, n_valid,
                                        n_valid[None, :], kv_head64, offs_d, d_mask, stride_cb, stride_cs, stride_ch,
                                        stride_cb, stride_cs, stride_ch, scale_log2, BLOCK_SIZE, IEEE_DOT, FP8)
        if FP8:
            acc = acc * v_scale

        out_rows = out_ptr + req64 * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        if NUM_SPLITS == 1:
            l_safe = tl.where(l_i > 0, l_i, 1.0)
            tl.store(out_rows, (acc / l_safe[:, None]).to(out_ptr.dtype.element_ty), mask=q_mask)
        else:
            part = (req64 * num_heads + head) * NUM_SPLITS + split  # [BLOCK_M]
            tl.store(part_m_ptr + part, m_i, mask=row_valid)
            tl.store(part_l_ptr + part, l_i, mask=row_valid)
            tl.store(part_acc_ptr + part[:, None] * HEAD_PAD + offs_d[None, :], acc, mask=row_valid[:, None])
            tl.debug_barrier()  # every thread's partial is stored before the counter says so
            counter = counter_ptr + req64 * num_kv_heads + kv_head
            if tl.atomic_add(counter, 1, sem="acq_rel") == active - 1:
                # Last to arrive: combine the splits of the GROUP heads in split order, all heads' partials
                # loaded at once when they fit in registers (a loop over heads waits on each load in turn).
                offs_s = tl.arange(0, SPLITS_PAD)
                s_mask = offs_s < active
                if GROUP_PAD * SPLITS_PAD * HEAD_PAD <= 16384:
                    offs_g = tl.arange(0, GROUP_PAD)
                    g_mask = offs_g < GROUP
                    idx = ((req64 * num_heads + kv_head * GROUP + offs_g) * NUM_SPLITS)[:, None] + offs_s[None, :]
                    gs_mask = g_mask[:, None] & s_mask[None, :]
                    m = tl.load(part_m_ptr + idx, mask=gs_mask, other=float("-inf"), cache_modifier=".cg")
                    l = tl.load(part_l_ptr + idx, mask=gs_mask, other=0.0, cache_modifier=".cg")
                    part_acc = tl.load(
                        part_acc_ptr + idx[:, :, None] * HEAD_PAD + offs_d[None, None, :],
                        mask=gs_mask[:, :, None] & d_mask[None, None, :], other=0.0, cache_modifier=".cg",
                    )
                    w = tl.exp2(m - tl.where(g_mask, tl.max(m, 1), 0.0)[:, None])
                    denom = tl.sum(w * l, 1)
                    o = tl.sum(part_acc * w[:, :, None], 1) / tl.where(denom > 0, denom, 1.0)[:, None]
                    tl.store(out_ptr + req64 * stride_ot + (kv_head * GROUP + offs_g)[:, None] * stride_oh
                             + offs_d[None, :], o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
                else:
                    for g in tl.static_range(GROUP):
                        base = (req64 * num_heads + kv_head * GROUP + g) * NUM_SPLITS
                        m = tl.load(part_m_ptr + base + offs_s, mask=s_mask, other=float("-inf"), cache_modifier=".cg")
                        l = tl.load(part_l_ptr + base + offs_s, mask=s_mask, other=0.0, cache_modifier=".cg")
                        w = tl.exp2(m - tl.max(m, 0))
                        denom = tl.sum(w * l, 0)
                        part_acc = tl.load(
                            part_acc_ptr + (base + offs_s)[:, None] * HEAD_PAD + offs_d[None, :],
                            mask=s_mask[:, None] & d_mask[None, :], other=0.0, cache_modifier=".cg",
                        )
                        o = tl.sum(part_acc * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)
                        tl.store(out_ptr + req64 * stride_ot + (kv_head * GROUP + g) * stride_oh + offs_d,
                                 o.to(out_ptr.dtype.element_ty), mask=d_mask)
                tl.atomic_xchg(counter, 0)


def _counter_buffer(device: torch.device, needed: int) -> torch.Tensor:
    """The device's zeroed split counters (grown outside CUDA-graph capture only)."""
    key = (device.type, device.index)
    buf = _counters.get(key)
    if buf is None or buf.numel() < needed:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("decode_attention's counter buffer must be allocated before CUDA-graph capture "
                               f"(need {needed} counters); run the same batch size eagerly first")
        buf = torch.zeros(max(needed, _MIN_COUNTERS), dtype=torch.int32, device=device)
        _counters[key] = buf
    return buf


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata,
    scale: float,
    num_splits: int | None = None,
    positions: torch.Tensor | None = None,
    cos_sin_cache: torch.Tensor | None = None,
    is_neox: bool = True,
    out: torch.Tensor | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Attention of request r's one new token (row r) over its paged cache, after storing its key and
    value (rotated by `positions` through `cos_sin_cache` when given) at slot_mapping[r]. `metadata` is
    an AttentionMetadata of a decode-only batch (num_tokens == num_reqs, max_query_len == 1). Tiles,
    warps and (unless `num_splits` forces it) the split count are paged_attention's decode choices
    (`tuning.attention_launch`). An FP8 cache stores and reads with k_scale / v_scale (unused otherwise)."""
    num_tokens, num_heads, head_size = query.shape
    _, _, block_size, num_kv_heads, cache_head_size = kv_cache.shape
    if metadata.num_tokens != metadata.num_reqs or metadata.max_query_len > 1:
        raise ValueError("decode_attention needs a decode-only batch (one new token per request)")
    if cache_head_size != head_size or num_heads % num_kv_heads or key.shape[1:] != (num_kv_heads, head_size):
        raise ValueError(f"query {tuple(query.shape)}, key {tuple(key.shape)} and cache {tuple(kv_cache.shape)} "
                         "do not fit")
    if value.shape != key.shape or any(t.stride(-1) != 1 for t in (query, key, value, kv_cache)):
        raise ValueError("query, key, value and kv_cache must be contiguous in the head dimension")
    rotary = cos_sin_cache is not None
    if rotary and (positions is None or cos_sin_cache.shape[-1] % 2 or cos_sin_cache.shape[-1] > head_size):
        raise ValueError("rotary needs positions and a cos_sin_cache of even width <= head_size")
    if out is None:
        out = torch.empty_like(query)
    num_reqs = int(metadata.num_reqs)
    if num_reqs == 0:
        return out
    group = num_heads // num_kv_heads
    launch = tuning.attention_launch(
        num_reqs=num_reqs, num_tokens=num_reqs, max_query_len=1, max_seq_len=int(metadata.max_seq_len),
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, device=query.device,
        num_splits=num_splits,
    )
    head_pad, splits = launch.head_pad, launch.num_splits
    if splits > 1:
        n_part = num_reqs * num_heads * splits
        part_acc = torch.empty(n_part * head_pad, dtype=torch.float32, device=query.device)
        part_m = torch.empty(n_part, dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
        counters = _counter_buffer(query.device, num_reqs * num_kv_heads)
    else:
        part_acc = part_m = part_l = counters = out  # unused
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    block_tables = metadata.block_tables
    cos_sin = cos_sin_cache if rotary else query
    pos = positions if rotary else metadata.seq_lens
    k_inv, v_inv, fp8 = fp8_launch_args(kv_cache, k_scale, v_scale)
    if not fp8["FP8"]:
        k_scale = v_scale = k_inv = v_inv = 1.0
    _decode_attn_kernel[(num_reqs, num_kv_heads, splits)](
        out, query, key, value, k_cache, v_cache,
        block_tables, metadata.seq_lens, metadata.slot_mapping, pos, cos_sin,
        part_acc, part_m, part_l, counters,
        float(scale) * float(k_scale) * _LOG2E, float(v_scale), k_inv, v_inv, num_heads, num_kv_heads,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        out.stride(0), out.stride(1), cos_sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        HEAD_SIZE=head_size, HEAD_PAD=head_pad, GROUP=group, BLOCK_M=launch.block_m, TILE_N=launch.tile_n,
        BLOCK_SIZE=block_size, NUM_SPLITS=splits, SPLITS_PAD=tuning.next_power_of_2(splits),
        GROUP_PAD=tuning.next_power_of_2(group),
        ROTARY=rotary, HALF=cos_sin_cache.shape[-1] // 2 if rotary else 1, IS_NEOX=is_neox,
        IEEE_DOT=query.dtype == torch.float32, **fp8,
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return out
