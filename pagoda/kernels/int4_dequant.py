"""Int4 weight dequantization for prefill (Triton): W [N, K] in the activation dtype from the int4 layout of
int4_layout.py, written into a caller's buffer, so that large-M products run in cuBLAS (F.linear) at its bf16
rate instead of in the tl.dot GEMM (int4_gemm.py, ~4x slower at M = 2048 on the H200).

One read of the packed bytes (half a byte per value) and one write of the dequantized weight (two bytes per
value): ~2.5 bytes per value, e.g. ~0.3 GB and ~70 us for Llama-3-8B's gate_up at 4.25 TB/s, against ~600 us
of bf16 matmul at M = 2048. Each program dequantizes [BLOCK_N rows, BLOCK_CH chunks of 128 inputs]:
- the same nibble trick as int4_gemv.py: (q | 0x4B000000) & (15 << 4j | 0x4B000000) is the fp32 2^23 + v · 16^j,
  and one FMA by 16^-j minus (2^(23 - 4j) + zero) leaves v - zero exactly; times the group's scale in fp32,
  rounded once to the output dtype: the very value int4_layout.dequantize(..., dtype) builds (bitwise);
- plane i of a chunk is 16 consecutive inputs, so every store writes 16 contiguous values of a row.

Shapes: qweight [N, K / 8] int32, scales [N, K / G], zeros uint8 [N, K / G] or None (8), contiguous (checked by
int4_gemv.check_weights); out [N, K] contiguous in a float dtype. Launch: tuning.INT4_DEQUANT_* constants.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels import tuning
from pagoda.kernels.int4_gemv import _nibble, _zero_magic, check_weights


@triton.jit
def _int4_dequant_kernel(qw_ptr, s_ptr, z_ptr, out_ptr, N, K, stride_qn, stride_sn, stride_on,
                         BLOCK_N: tl.constexpr, BLOCK_CH: tl.constexpr, GROUP_SIZE: tl.constexpr,
                         HAS_ZEROS: tl.constexpr):
    PPG: tl.constexpr = 8 if GROUP_SIZE >= 128 else GROUP_SIZE // 16  # planes per group
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ch = tl.program_id(1) * BLOCK_CH + tl.arange(0, BLOCK_CH)[None, :, None]  # [1, CH, 1]
    p3 = tl.arange(0, 16)[None, None, :]
    rows = offs_n.to(tl.int64)[:, None, None]
    mask = (offs_n < N)[:, None, None] & (ch * 128 < K) & (p3 < 16)
    q = tl.load(qw_ptr + rows * stride_qn + ch * 16 + p3, mask=mask, other=0)  # [BN, CH, 16] int32
    q_lo = q | 0x4B000000
    q_hi = (q >> 16) | 0x4B000000
    for i in tl.static_range(8):
        if i % PPG == 0:
            g = (ch * 128 + i * 16) // GROUP_SIZE + p3 * 0
            s = tl.load(s_ptr + rows * stride_sn + g, mask=mask, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                z = tl.load(z_ptr + rows * stride_sn + g, mask=mask, other=0).to(tl.float32)
            else:
                z = tl.zeros_like(s) + 8.0
        w = _nibble(q_lo if i < 4 else q_hi, i % 4, _zero_magic(z, i % 4)) * s
        tl.store(out_ptr + rows * stride_on + ch * 128 + i * 16 + p3, w.to(out_ptr.dtype.element_ty), mask=mask)


def int4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                    out: torch.Tensor) -> torch.Tensor:
    """Write W = (q - zero) · scale [N, K] into `out` (contiguous [N, K], any float dtype) and return it."""
    n, k = qweight.shape[0], qweight.shape[1] * 8
    group = check_weights(qweight, scales, zeros, k)
    if out.shape != (n, k) or not out.is_contiguous() or not out.is_floating_point():
        raise ValueError(f"int4_dequantize: out must be a contiguous float [{n}, {k}], got {tuple(out.shape)}")
    if n == 0:
        return out
    block_n, block_ch = tuning.INT4_DEQUANT_BLOCK_N, tuning.INT4_DEQUANT_BLOCK_CH
    _int4_dequant_kernel[(triton.cdiv(n, block_n), triton.cdiv(k // 128, block_ch))](
        qweight, scales, zeros if zeros is not None else scales, out, n, k,
        qweight.stride(0), scales.stride(0), out.stride(0),
        BLOCK_N=block_n, BLOCK_CH=block_ch, GROUP_SIZE=group, HAS_ZEROS=zeros is not None,
        num_warps=tuning.INT4_DEQUANT_NUM_WARPS,
    )
    return out
