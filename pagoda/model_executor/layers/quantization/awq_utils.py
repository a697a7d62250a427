"""AWQ int4 math in plain torch: AutoAWQ's packing order, unpacking, dequantization and the reference matmul.

Invariants:
- A packed int32 holds eight 4-bit values of consecutive logical columns 8c .. 8c + 7; the value of
  logical column 8c + AWQ_PACK_ORDER[p] sits in bits [4p, 4p + 4) (AutoAWQ's GEMM order
  [0, 2, 4, 6, 1, 3, 5, 7]); equivalently column 8c + j sits at nibble AWQ_REVERSE_ORDER[j].
  Values are unsigned, 0..15; a packed element may be negative as an int32 (bit 31 set).
- Dequantization of qweight [K, N / 8], qzeros [K / G, N / 8], scales [K / G, N]:
  w[i, j] = (q[i, j] - z[i // G, j]) * s[i // G, j], a [K, N] weight (the transpose of nn.Linear's),
  computed in the activation dtype (the integer difference is exact in it; one rounding, of the
  product by the scale). The layer computes x @ w + bias.
- Nothing here imports Triton. Unpacking, dequantization and the matmul never sync with the host
  (a CUDA graph can capture them) and are the CPU path too; `pack_int4` (writing checkpoints, tests)
  checks its values on the host.
"""

from __future__ import annotations

import torch

AWQ_BITS = 4
AWQ_PACK_FACTOR = 32 // AWQ_BITS  # 8 values per int32
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble p holds logical column AWQ_PACK_ORDER[p]
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # logical column j sits at nibble AWQ_REVERSE_ORDER[j]
_MASK = (1 << AWQ_BITS) - 1


def _column_shifts(device: torch.device) -> torch.Tensor:
    """[8] int32: the bit offset of logical column j of a pack, 4 · AWQ_REVERSE_ORDER[j] = 4 · (j // 2 + 4 · (j % 2)).

    Computed with arange rather than copied from a host list, so that it can run inside CUDA-graph capture."""
    j = torch.arange(AWQ_PACK_FACTOR, dtype=torch.int32, device=device)
    return AWQ_BITS * (j // 2 + 4 * (j % 2))


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[R, C] int32 packed in AutoAWQ's order -> [R, 8 · C] int32 values 0..15 in logical column order."""
    shifts = _column_shifts(packed.device)
    values = torch.bitwise_right_shift(packed.unsqueeze(-1), shifts).bitwise_and_(_MASK)  # sign bits masked off
    return values.reshape(packed.shape[0], -1)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """[R, 8 · C] integers 0..15 in logical column order -> [R, C] int32 in AutoAWQ's order (unpack_int4's inverse)."""
    rows, cols = values.shape
    if cols % AWQ_PACK_FACTOR:
        raise ValueError(f"pack_int4: {cols} columns are not a multiple of {AWQ_PACK_FACTOR}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > _MASK):
        raise ValueError(f"pack_int4: values must be in 0..{_MASK}")
    shifts = _column_shifts(values.device).to(torch.int64)
    packed = (values.to(torch.int64).reshape(rows, -1, AWQ_PACK_FACTOR) << shifts).sum(-1)  # disjoint bits: sum == or
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # wrap to a signed int32


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
               dtype: torch.dtype) -> torch.Tensor:
    """The [K, N] weight in `dtype` of an AWQ layer: (q - z[group]) · s[group] (see the module invariants)."""
    k = qweight.shape[0]
    # integers 0..15 and their differences are exact in every float dtype, so converting before the
    # subtraction gives (q - z) · s exactly as written, with one [K, N] temporary fewer
    w = unpack_int4(qweight).to(dtype)
    grouped = w.view(k // group_size, group_size, -1)
    grouped.sub_(unpack_int4(qzeros).to(dtype).unsqueeze(1)).mul_(scales.to(dtype).unsqueeze(1))
    return w


def awq_linear_reference(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                         group_size: int, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] @ the dequantized weight [K, N] (+ bias), in x's dtype: the math every AWQ path must equal."""
    weight = dequantize(qweight, qzeros, scales, group_size, x.dtype)
    out = torch.matmul(x, weight)
    return out if bias is None else out + bias.to(x.dtype)
