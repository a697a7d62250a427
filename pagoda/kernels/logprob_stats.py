"""Sampled tokens' logprob statistics (Triton): per row of raw logits, in one read, the row's logsumexp, the
token's logit and its rank.

For row r with token t = token_ids[r] (all arithmetic in float32):
- log_norm[r] = log(sum_v exp(x[v])) (an online logsumexp: each lane keeps a running max and a sum
  rescaled to it; a row of -inf everywhere gives -inf);
- token_logit[r] = x[t];
- rank[r] = 1 + #{v : x[v] > x[t]} (1 = the most likely token; the order of the logits is the order
  of their logprobs, the log-normaliser being shared).
So logprob[r] = token_logit[r] - log_norm[r] without a [R, V] log_softmax (sample/logprobs.py). The
logsumexp agrees with torch's to float32 rounding (exp is the GPU's fast exp2-based one), the rank and
the token logit exactly. NaNs are not treated specially.

Grid: (R,), one program per row streaming it in tiles of BLOCK_V. Inputs: logits [R, V] float32/float16/
bfloat16 with unit stride in V; token_ids [R] int64 in [0, V), on the logits' device.
Its torch reference, also the CPU path, is sample/logprobs.py `logprob_stats_torch` (this file needs Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning


@triton.jit
def _logprob_stats_kernel(logits_ptr, tokens_ptr, log_norm_ptr, token_logit_ptr, rank_ptr, V, stride_row,
                          BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    token_logit = tl.load(row_ptr + tl.load(tokens_ptr + row)).to(tl.float32)
    lanes = tl.arange(0, BLOCK_V)
    running_max = tl.full((BLOCK_V,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_V,), tl.float32)
    above = tl.zeros((BLOCK_V,), tl.int32)
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, x)
        pivot = tl.where(new_max == float("-inf"), 0.0, new_max)  # no -inf - -inf while a lane saw only -inf
        running_sum = running_sum * tl.exp(running_max - pivot) + tl.exp(x - pivot)
        running_max = new_max
        above += (x > token_logit).to(tl.int32)
    row_max = tl.max(running_max, axis=0)
    pivot = tl.where(row_max == float("-inf"), 0.0, row_max)
    total = tl.sum(running_sum * tl.exp(running_max - pivot), axis=0)
    tl.store(log_norm_ptr + row, pivot + tl.log(total))
    tl.store(token_logit_ptr + row, token_logit)
    tl.store(rank_ptr + row, tl.sum(above, axis=0).to(tl.int64) + 1)


def logprob_stats(logits: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_norm [R] float32, token_logit [R] float32, rank [R] int64) of `token_ids` [R] under `logits` [R, V]."""
    if logits.dim() != 2 or logits.shape[1] < 1 or logits.stride(1) != 1:
        raise ValueError(f"logits must be [R, V] with V >= 1 and unit stride in V, got {tuple(logits.shape)}")
    rows = logits.shape[0]
    if token_ids.shape != (rows,) or token_ids.device != logits.device:
        raise ValueError(f"token_ids must be [{rows}] on {logits.device}, got {tuple(token_ids.shape)} on "
                         f"{token_ids.device}")
    device = logits.device
    log_norm = torch.empty(rows, dtype=torch.float32, device=device)
    token_logit = torch.empty(rows, dtype=torch.float32, device=device)
    rank = torch.empty(rows, dtype=torch.int64, device=device)
    if rows:
        block = min(tuning.SAMPLE_BLOCK_V, tuning.next_power_of_2(logits.shape[1]))
        _logprob_stats_kernel[(rows,)](logits, token_ids.to(torch.int64).contiguous(), log_norm, token_logit, rank,
                                       logits.shape[1], logits.stride(0), BLOCK_V=block,
                                       num_warps=min(tuning.SAMPLE_NUM_WARPS, tuning.row_num_warps(block)))
    return log_norm, token_logit, rank

