"""The int4 weight layout the Triton int4 kernels read (int4_gemv.py, int4_gemm.py), shared by AWQ, GPTQ and
compressed-tensors' pack-quantized 4-bit layers, with its packing, unpacking and dequantization in plain torch (the kernels' tests' reference).

AWQ, GPTQ and compressed-tensors checkpoints pack 4-bit values along different dims and in different nibble
orders; at load time on CUDA their linear methods repack each into this one layout (quantization/int4_linear.py), on the device.
For a linear layer y = x @ Wᵀ with W [N, K] (nn.Linear's orientation) and groups of G inputs:

- `qweight` int32 [N, K / 8], contiguous, packed along K in chunks of CHUNK = 128 inputs. Row n's chunk c is
  the 16 int32s qweight[n, 16c : 16c + 16]; nibble i (bits [4i, 4i + 4)) of int32 16c + p holds
  W[n, 128c + 16i + p], an unsigned value 0..15 (p < 16, i < 8). So "plane" i of a chunk, the i-th nibbles
  of its 16 int32s, is 16 consecutive inputs: a kernel shifts a loaded [rows, 16] tile by 4i and multiplies
  it by a contiguous 16-wide slice of x, without shuffling values between lanes.
- `scales` [N, K / G] in the model dtype, contiguous: the scale of W[n, k] is scales[n, k // G].
- `zeros` uint8 [N, K / G], contiguous, the real zero point (AWQ's zero; GPTQ's stored zero + 1 for the v1
  format): W[n, k] = (q[n, k] - zeros[n, k // G]) · scales[n, k // G]. `zeros` is None when every zero is 8
  (symmetric GPTQ), and the kernels then use the constant 8.
- K % CHUNK == 0, and G is 16, 32 or 64 or a multiple of 128 (and divides K), so that a plane never straddles
  a group and a chunk's planes split evenly into groups: `supports(K, G)`. G = K: one group over the input. Layers that do not fit stay on the torch path.
- Optional `perm` int64 [K] (GPTQ with desc_act): the layout's input k is the layer's input perm[k] (rows
  sorted by g_idx so that groups are contiguous); callers gather x[:, perm] before the kernels.

Nothing here imports Triton (the CPU reference path and tests use it without Triton).
"""

from __future__ import annotations

import torch

CHUNK = 128  # inputs per chunk: 16 int32s x 8 nibbles
PLANE = 16  # int32s per chunk (= consecutive inputs per nibble plane)
PLANES = 8  # nibbles per int32
ZERO_IF_NONE = 8  # the zero point when `zeros` is None
_ROWS_PER_STEP = 2048  # rows packed at a time (bounds the temporaries at load time)


def supports(k: int, group_size: int) -> bool:
    """Whether a layer with K inputs and groups of `group_size` fits the layout."""
    fits_chunks = group_size in (PLANE, 2 * PLANE, 4 * PLANE) or (group_size > 0 and group_size % CHUNK == 0)
    return k > 0 and k % CHUNK == 0 and fits_chunks and k % group_size == 0


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(PLANES, dtype=torch.int32, device=device) * 4


def pack(values: torch.Tensor) -> torch.Tensor:
    """[N, K] integers 0..15 (W's values, nn.Linear orientation) -> qweight [N, K / 8] int32 in this layout.
    Values are not checked (they come from unpacking a checkpoint's int4s)."""
    n, k = values.shape
    if k % CHUNK:
        raise ValueError(f"int4 layout: K={k} is not a multiple of {CHUNK}")
    out = torch.empty(n, k // PLANES, dtype=torch.int32, device=values.device)
    shifts = _shifts(values.device).to(torch.int64).view(1, 1, PLANES, 1)
    for r0 in range(0, n, _ROWS_PER_STEP):
        block = values[r0:r0 + _ROWS_PER_STEP].to(torch.int64).reshape(-1, k // CHUNK, PLANES, PLANE)
        packed = (block << shifts).sum(2)  # disjoint bits: sum == or
        packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # wrap to a signed int32
        out[r0:r0 + _ROWS_PER_STEP] = packed.reshape(block.shape[0], -1).to(torch.int32)
    return out


def unpack(qweight: torch.Tensor) -> torch.Tensor:
    """qweight [N, K / 8] -> [N, K] int32 values 0..15 (pack's inverse)."""
    n, packs = qweight.shape
    chunks = qweight.view(n, packs // PLANE, 1, PLANE)
    values = torch.bitwise_right_shift(chunks, _shifts(qweight.device).view(1, 1, PLANES, 1)).bitwise_and_(15)
    return values.reshape(n, packs * PLANES)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
               dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] in `dtype`: (q - zero) · scale, one rounding (of the product), as the checkpoints' references."""
    w = unpack(qweight).to(dtype)
    n, k = w.shape
    z = zeros.to(dtype) if zeros is not None else torch.full_like(scales, ZERO_IF_NONE, dtype=dtype)
    grouped = w.view(n, k // group_size, group_size)
    grouped.sub_(z.unsqueeze(-1)).mul_(scales.to(dtype).unsqueeze(-1))
    return w


def int4_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                    group_size: int, bias: torch.Tensor | None = None, perm: torch.Tensor | None = None,
                    silu_and_mul: bool = False, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
                    residual: torch.Tensor | None = None):
    """Torch reference of the kernels: y = x' @ Wᵀ (+ bias) computed in fp32 from W dequantized in fp32,
    rounded once to x's dtype, where x' = x[:, perm] (perm given) or RMSNorm(x (+ residual)) · norm_weight
    (norm_weight given; with a residual, returns (y, x + residual rounded to the residual's dtype)).
    `silu_and_mul`: W holds [gate | up] rows and y = silu(gate) · up."""
    s = x if residual is None else (x.float() + residual.float()).to(residual.dtype)
    xf = s.float()
    if norm_weight is not None:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()
    if perm is not None:
        xf = xf[:, perm]
    y = xf @ dequantize(qweight, scales.float(), zeros, group_size, torch.float32).t()
    if bias is not None:
        y = y + bias.float()
    if silu_and_mul:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y.to(x.dtype) if residual is None else (y.to(x.dtype), s)
