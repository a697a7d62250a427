"""Structured-output token bitmask applied to logits in place (Triton).

Layout (xgrammar / vLLM): `bitmask` is int32 [M, W], W = ceil(V / 32) for a V-token vocabulary;
bit b of word w (b = 0 the least significant) set means token 32 * w + b is allowed, cleared
means its logit becomes -inf. Mask row i applies to logits row `row_indices[i]` (row i when
`row_indices` is None). Columns >= 32 * W are disallowed (a mask narrower than the vocabulary);
bits past V are ignored (a mask wider than it). Allowed logits are never read or written.

Grid: (M, ceil(V / BLOCK)). Program (i, j) loads the BLOCK / 32 words of mask row i that cover
columns [j * BLOCK, (j + 1) * BLOCK), expands them to BLOCK bits and stores -inf at the cleared
ones of logits row row_indices[i]: a store-only kernel (about V / 8 bytes read and at most 2-4 V bytes
written per row). BLOCK comes from `block_size` unless forced; it changes speed, never results.
A row named twice in `row_indices` gets the union of its masks' bans.

Inputs: logits [R, V] float32/float16/bfloat16 with unit stride in V (any row stride); bitmask
int32 [M, W] (made contiguous in its last dim if not); row_indices int32/int64 [M] with values in
[0, R), not checked (checking would need a device sync). All on one device.
`pagoda.sample.token_bitmask.apply_token_bitmask_ref` is the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning

_LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest and smallest vocab columns per program. Not yet swept on the GPU
# (scripts/bench_token_bitmask.py --block ...): 4096 is xgrammar's choice.
TOKEN_BITMASK_MAX_BLOCK = 4096
TOKEN_BITMASK_MIN_BLOCK = 1024
TOKEN_BITMASK_NUM_WARPS = 4


@triton.jit
def _token_bitmask_kernel(
    logits_ptr, bitmask_ptr, indices_ptr,
    V, W, stride_logits, stride_mask,
    HAS_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):
    mask_row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    if HAS_INDICES:
        row = tl.load(indices_ptr + mask_row).to(tl.int64)
    else:
        row = mask_row
    word_offs = block * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    # A missing word (mask narrower than the vocab) reads as 0: every token in it is disallowed.
    words = tl.load(bitmask_ptr + mask_row * stride_mask + word_offs, mask=word_offs < W, other=0)
    banned = ((words[:, None] >> tl.arange(0, 32)[None, :]) & 1) == 0
    banned = tl.reshape(banned, (BLOCK,))  # row-major: element 32 * w + b is bit b of word w
    offs = block * BLOCK + tl.arange(0, BLOCK)
    neg_inf = tl.full((BLOCK,), float("-inf"), tl.float32).to(logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + row * stride_logits + offs, neg_inf, mask=banned & (offs < V))


def block_size(num_mask_rows: int, vocab: int, sms: int = tuning.DEFAULT_SM_COUNT) -> int:
    """Vocab columns per program: a power of two in [TOKEN_BITMASK_MIN_BLOCK, TOKEN_BITMASK_MAX_BLOCK],
    the largest that still gives about SPLIT_TARGET_WAVES waves of programs over `sms` SMs (small
    batches need smaller blocks to spread over the GPU), and no larger than the vocab needs."""
    block = min(TOKEN_BITMASK_MAX_BLOCK, max(TOKEN_BITMASK_MIN_BLOCK, tuning.next_power_of_2(vocab)))
    target = tuning.SPLIT_TARGET_WAVES * sms
    while block > TOKEN_BITMASK_MIN_BLOCK and max(1, num_mask_rows) * -(-vocab // block) < target:
        block //= 2
    return block


def apply_token_bitmask_triton(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    row_indices: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Set logits[row_indices[i], t] = -inf where bit t of bitmask row i is cleared; returns `logits`.
    `block` forces the vocab columns per program (a power of two >= 32), for tests and tuning."""
    if logits.dim() != 2 or logits.dtype not in _LOGITS_DTYPES:
        raise TypeError(f"logits must be a 2-D float32/float16/bfloat16 tensor, got {logits.dtype} "
                        f"{tuple(logits.shape)}")
    if logits.shape[1] > 1 and logits.stride(1) != 1:
        raise ValueError("logits must have unit stride in the vocab dimension")
    if bitmask.dim() != 2 or bitmask.dtype != torch.int32:
        raise TypeError(f"bitmask must be a 2-D int32 tensor, got {bitmask.dtype} {tuple(bitmask.shape)}")
    num_mask_rows, width = bitmask.shape
    if row_indices is not None:
        if row_indices.shape != (num_mask_rows,):
            raise ValueError(f"row_indices shape {tuple(row_indices.shape)} != ({num_mask_rows},), "
                             "one logits row per bitmask row")
    elif num_mask_rows != logits.shape[0]:
        raise ValueError(f"bitmask has {num_mask_rows} rows, logits {logits.shape[0]}; pass row_indices "
                         "to mask a subset of the rows")
    vocab = logits.shape[1]
    if num_mask_rows == 0 or vocab == 0:
        return logits
    if block is None:
        sms = tuning.sm_count(logits.device.index) if logits.is_cuda else tuning.DEFAULT_SM_COUNT
        block = block_size(num_mask_rows, vocab, sms)
    elif block < 32 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 32, got {block}")
    if width > 0 and bitmask.stride(1) != 1:
        bitmask = bitmask.contiguous()
    indices = row_indices if row_indices is not None else bitmask  # unused without HAS_INDICES
    grid = (num_mask_rows, triton.cdiv(vocab, block))
    _token_bitmask_kernel[grid](
        logits, bitmask, indices,
        vocab, width, logits.stride(0), bitmask.stride(0),
        HAS_INDICES=row_indices is not None, BLOCK=block,
        num_warps=TOKEN_BITMASK_NUM_WARPS,
    )
    return logits
