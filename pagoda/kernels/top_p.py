"""Top-p and min-p without a sort (Triton): each row's cut as a threshold on its scaled logits s = logits / T.

For a random row r (temperature > 0) with s[v] = logits[v] / T (IEEE division, as the race kernel's), m =
max s, and weights w[v] = exp(s[v] - m):
- min-p keeps s[v] >= floor = m + log(min_p) (p[v] >= min_p * p_max); without min-p, floor = m - 104, below
  which w[v] is 0 in float32 anyway;
- top-p keeps the most likely tokens of the min-p survivors until their probability reaches top_p, the
  token that crosses it included (the sort-based rule). As a threshold: the largest t with
  mass(t) = sum_{s[v] >= t} w[v] >= top_p * mass(floor). mass is non-increasing in t, so t is found by
  a search on [floor, m + 1): each pass evaluates mass at NUM_PIVOTS evenly spaced pivots in one read
  of the row and keeps the sub-interval where mass crosses the target; NUM_PASSES passes shrink the
  interval (at most 105 wide) by (NUM_PIVOTS + 1)^NUM_PASSES, below float32's resolution, so the kept
  set {s >= threshold} is the sort's up to ties within an ulp of the crossing token.
- the threshold is -inf for greedy rows and rows with neither top-p (top_p >= 1) nor min-p (min_p <= 0).

The race kernel (kernels/sample.py) then draws among {s >= threshold} in one more read: the same q as
every other path, so a seeded row's draws do not depend on the path. Grid: (R,), one program per row
(its re-reads come from L2). Inputs: logits [R, V] float32/float16/bfloat16, unit stride in V;
temperature, top_p, min_p [R] float32. Output: thresholds [R] float32. `top_p_thresholds_ref` is the
torch reference (a sort of each row).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning

NUM_PIVOTS = 8
NUM_PASSES = 10
_FLOOR_SPAN = 104.0  # exp(-104) is below float32's smallest subnormal: w = 0 there


@triton.jit
def _scaled(row_ptr, offs, V, temperature):
    x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
    return tl.math.div_rn(x, temperature)


@triton.jit
def _top_p_threshold_kernel(logits_ptr, temperature_ptr, top_p_ptr, min_p_ptr, out_ptr, V, stride_row,
                            BLOCK_V: tl.constexpr, NUM_PIVOTS: tl.constexpr, NUM_PASSES: tl.constexpr,
                            FLOOR_SPAN: tl.constexpr):
    row = tl.program_id(0)
    temperature = tl.load(temperature_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    threshold = min_p * 0.0 - float("inf")  # a float32 scalar (the branches below assign tensors)
    if temperature > 0.0 and (top_p < 1.0 or min_p > 0.0):
        row_ptr = logits_ptr + row.to(tl.int64) * stride_row
        lanes = tl.arange(0, BLOCK_V)
        running_max = tl.full((BLOCK_V,), float("-inf"), tl.float32)
        for start in range(0, V, BLOCK_V):
            running_max = tl.maximum(running_max, _scaled(row_ptr, start + lanes, V, temperature))
        m = tl.max(running_max, axis=0)
        floor = m - FLOOR_SPAN
        if min_p > 0.0:
            floor = tl.maximum(floor, m + tl.log(min_p))
        threshold = floor
        if top_p < 1.0:
            total = tl.zeros((BLOCK_V,), tl.float32)
            for start in range(0, V, BLOCK_V):
                s = _scaled(row_ptr, start + lanes, V, temperature)
                total += tl.where(s >= floor, tl.exp(s - m), 0.0)
            target = top_p * tl.sum(total, axis=0)
            lo = floor  # mass(lo) >= target
            hi = m + 1.0  # mass(hi) = 0 < target
            steps = 1.0 + tl.arange(0, NUM_PIVOTS).to(tl.float32)
            for _ in range(NUM_PASSES):
                step = (hi - lo) / (NUM_PIVOTS + 1)
                pivots = lo + step * steps  # [P]
                mass = tl.zeros((NUM_PIVOTS,), tl.float32)
                for start in range(0, V, BLOCK_V):
                    s = _scaled(row_ptr, start + lanes, V, temperature)
                    w = tl.where(s >= lo, tl.exp(s - m), 0.0)
                    mass += tl.sum(tl.where(s[None, :] >= pivots[:, None], w[None, :], 0.0), axis=1)
                reached = tl.sum((mass >= target).to(tl.int32), axis=0).to(tl.float32)  # pivots 0..n-1 reach it
                hi = lo + step * (reached + 1.0)
                lo = lo + step * reached
            threshold = lo
    tl.store(out_ptr + row, threshold)


def top_p_thresholds(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                     min_p: torch.Tensor) -> torch.Tensor:
    """Thresholds [R] float32 on logits / T that cut each row to its min-p and top-p set (module docstring)."""
    if logits.dim() != 2 or logits.shape[1] < 1 or logits.stride(1) != 1:
        raise ValueError(f"logits must be [R, V] with V >= 1 and unit stride in V, got {tuple(logits.shape)}")
    rows = logits.shape[0]
    for name, tensor in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p)):
        if tensor.shape != (rows,) or tensor.dtype != torch.float32 or tensor.device != logits.device:
            raise ValueError(f"{name} must be [{rows}] float32 on {logits.device}, got {tuple(tensor.shape)} "
                             f"{tensor.dtype} on {tensor.device}")
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        block = min(tuning.TOP_P_BLOCK_V, tuning.next_power_of_2(logits.shape[1]))
        _top_p_threshold_kernel[(rows,)](logits, temperature, top_p, min_p, out, logits.shape[1], logits.stride(0),
                                         BLOCK_V=block, NUM_PIVOTS=NUM_PIVOTS, NUM_PASSES=NUM_PASSES,
                                         FLOOR_SPAN=_FLOOR_SPAN, num_warps=tuning.SAMPLE_NUM_WARPS)
    return out


def top_p_thresholds_ref(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                         min_p: torch.Tensor) -> torch.Tensor:
    """Torch reference: the scaled logit of each row's crossing token (from a sort), or the min-p floor."""
    positive = temperature > 0
    s = logits.to(torch.float32) / torch.where(positive, temperature, torch.ones_like(temperature)).unsqueeze(1)
    m = s.amax(dim=-1, keepdim=True)
    floor = torch.maximum(m - _FLOOR_SPAN, m + torch.log(min_p).unsqueeze(1))  # log(0) = -inf: no min-p
    w = torch.where(s >= floor, torch.exp(s - m), torch.zeros_like(s))
    w_sorted, order = w.sort(dim=-1, descending=True)
    before = w_sorted.cumsum(dim=-1) - w_sorted
    crossing = (before < top_p.unsqueeze(1) * w.sum(-1, keepdim=True)).sum(-1, keepdim=True) - 1
    cut = s.gather(1, order.gather(1, crossing.clamp_min(0))).squeeze(1)
    cut = torch.where(top_p < 1.0, cut, floor.squeeze(1))
    active = positive & ((top_p < 1.0) | (min_p > 0.0))
    return torch.where(active, cut, torch.full_like(cut, float("-inf")))
