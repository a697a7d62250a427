"""AWQ, GPTQ and compressed-tensors W4A16 layers on the Triton int4 kernels: the repacking at load time and the
dispatch per call.

At load time on CUDA (`process_weights_after_loading`), a 4-bit AWQ, GPTQ or compressed-tensors pack-quantized
layer whose shapes fit the kernels' layout (pagoda/kernels/int4_layout.py: K % 128 == 0, a group size of 16, 32,
64 or a multiple of 128; one group over the whole input for GPTQ -1 / compressed-tensors "channel") is repacked on
its device into that layout (repack_awq, repack_gptq, repack_compressed_tensors), and its checkpoint-layout
parameters are dropped:

Invariants:
- A layer either holds its checkpoint layout (qweight / qzeros / scales [/ g_idx], or compressed-tensors'
  weight_packed / weight_scale [/ weight_zero_point]: the torch reference path, always on CPU) or the kernel
  layout, never both: `int4_qweight` int32 [N, K / 8], `int4_scales` [N, K / G] in the model dtype,
  `int4_zeros` uint8 [N, K / G] or None (every zero 8: symmetric GPTQ or compressed-tensors), `int4_perm`
  int64 [K] or None, and the int `int4_group_size` G. Repacking is exact: the kernel layout
  dequantizes to the same (q - zero) · scale values as the checkpoint's.
- GPTQ with desc_act: the rows are sorted by g_idx at load time (each group then contiguous) and `int4_perm`
  says which input each sorted row belongs to; every call gathers x[:, int4_perm] first (a pending RMSNorm
  is then materialized, not fused). A g_idx whose sorted groups are not consecutive runs of equal length
  (e.g. a row-parallel shard of an act-order checkpoint) keeps the layer on the torch path, as do GPTQ
  8-bit and compressed-tensors W8A16 (dequantize, then matmul), a layer outside the layout, and
  PAGODA_INT4_KERNELS=0 (tuning.INT4_KERNELS).
- Per call (`int4_matmul`), by rows M of the [M, K] input (all thresholds in tuning.py, with env overrides):
  M <= tuning.INT4_GEMV_USE_MAX_M runs the int4 GEMV, which also takes the SiLU·mul of a [gate | up] weight and,
  with tuning.INT4_FUSE_NORM (off by default: measured slower), a pending RMSNorm (+ residual); M <= tuning.INT4_SMALL_M_USE_MAX_M (off by default until timed) runs the
  operand-swapped small-batch GEMM (int4_gemm_small_m.py); M >= tuning.INT4_DEQUANT_MIN_M (prefill) dequantizes
  W into the per-device workspace (int4_dequant.py) and runs F.linear (cuBLAS) on it; M in between runs the
  tl.dot GEMM.
  Outside the GEMV the norm is materialized first and the activation applied after. The choice depends on
  shapes only, except that under CUDA-graph capture the dequant path gives way to the GEMM.
- The workspace (`_workspace`) is one flat buffer per (device, dtype), grown only when a larger weight comes
  (so it is allocated once per model shape, not per call) and never while a CUDA graph is being captured: a
  captured graph never holds its address. Layers use it one after another on the stream that owns it, so
  reusing it between layers is safe; prefill steps run eager.
- Nothing here imports Triton or a kernel module until a layer is repacked or called on the kernel path
  (CPU layers never are: a CPU install needs no Triton).
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.kernels import tuning
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm

_ROWS_PER_STEP = 1024  # input rows unpacked at a time while repacking (bounds the temporaries)


def _layout():
    from pagoda.kernels import int4_layout

    return int4_layout


def _kernels():
    """(int4_gemv, int4_gemm, int4_dequantize, int4_gemm_small_m), imported on first use (only repacked layers,
    i.e. CUDA ones, reach them)."""
    from pagoda.kernels.int4_dequant import int4_dequantize
    from pagoda.kernels.int4_gemm import int4_gemm
    from pagoda.kernels.int4_gemm_small_m import int4_gemm_small_m
    from pagoda.kernels.int4_gemv import int4_gemv

    return int4_gemv, int4_gemm, int4_dequantize, int4_gemm_small_m


_WORKSPACES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _workspace(n: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A contiguous [n, k] view of the per-(device, dtype) dequant workspace, grown to fit (see the invariants)."""
    key = (device, dtype)
    buf = _WORKSPACES.get(key)
    if buf is None or buf.numel() < n * k:
        _WORKSPACES.pop(key, None)
        buf = _WORKSPACES[key] = torch.empty(n * k, dtype=dtype, device=device)
    return buf[:n * k].view(n, k)


def _capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def has_int4_layout(layer: nn.Module) -> bool:
    return getattr(layer, "int4_group_size", None) is not None


def materialize(x):
    """x, with a pending RMSNorm computed (for the paths that cannot fuse it)."""
    return x.materialize() if isinstance(x, PendingRMSNorm) else x


def _pack_rows(rows_of, k: int, n: int, device: torch.device) -> torch.Tensor:
    """qweight [N, K / 8] of the kernel layout from `rows_of(k0, k1)`: values [k1 - k0, N] of W's inputs k0..k1."""
    layout = _layout()
    out = torch.empty(n, k // 8, dtype=torch.int32, device=device)
    for k0 in range(0, k, _ROWS_PER_STEP):  # _ROWS_PER_STEP % 128 == 0: whole chunks per step
        k1 = min(k, k0 + _ROWS_PER_STEP)
        out[:, k0 // 8:k1 // 8] = layout.pack(rows_of(k0, k1).t())
    return out


def _install(layer: nn.Module, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
             perm: torch.Tensor | None, group_size: int, drop: tuple[str, ...]) -> None:
    """Replace the checkpoint-layout parameters `drop` by the kernel layout's (see the module invariants)."""
    for name in drop:
        if hasattr(layer, name):
            delattr(layer, name)
    if zeros is not None and bool((zeros == 8).all()):  # symmetric: the kernels' constant zero
        zeros = None
    tensors = {"int4_qweight": qweight, "int4_scales": scales.contiguous(),
               "int4_zeros": None if zeros is None else zeros.to(torch.uint8).contiguous(), "int4_perm": perm}
    for name, tensor in tensors.items():
        layer.register_parameter(name, None if tensor is None else nn.Parameter(tensor, requires_grad=False))
    layer.int4_group_size = group_size


def kernels_apply(weight: torch.Tensor) -> bool:
    """Whether a layer holding `weight` (its qweight) is repacked: on CUDA, unless PAGODA_INT4_KERNELS=0."""
    return weight.is_cuda and tuning.INT4_KERNELS


def repack_awq(layer: nn.Module) -> bool:
    """AWQ (qweight [K, N / 8] in AutoAWQ's order, qzeros [K / G, N / 8], scales [K / G, N]) -> the kernel
    layout, on the layer's device; False (nothing changed) if the shapes do not fit it."""
    from pagoda.model_executor.layers.quantization.awq_utils import unpack_int4

    qweight, group = layer.qweight, layer.awq_group_size
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if not _layout().supports(k, group):
        return False
    packed = _pack_rows(lambda k0, k1: unpack_int4(qweight[k0:k1]), k, n, qweight.device)
    zeros = unpack_int4(layer.qzeros).t()
    _install(layer, packed, layer.scales.t(), zeros, None, group, ("qweight", "qzeros", "scales"))
    return True


def _gptq_groups(layer: nn.Module, k: int) -> tuple[torch.Tensor | None, int, int] | None:
    """(perm or None, first group, group size) of a GPTQ layer's K rows on this rank, or None when its
    g_idx does not sort into consecutive groups of equal length. One host sync, at load time."""
    g_idx = getattr(layer, "g_idx", None)
    if g_idx is None or g_idx.numel() == 0:
        groups = layer.scales.shape[0]
        return (None, 0, k // groups) if k % groups == 0 else None
    g_sorted, perm = torch.sort(g_idx.to(torch.int64), stable=True)
    first, count = int(g_sorted[0]), int(g_sorted[-1] - g_sorted[0]) + 1
    if k % count:
        return None
    group = k // count
    expected = first + torch.arange(k, device=g_idx.device) // group
    if not torch.equal(g_sorted, expected):
        return None
    identity = torch.equal(perm, torch.arange(k, device=perm.device))
    return (None if identity else perm, first, group)


def repack_gptq(layer: nn.Module, bits: int, zero_offset: int) -> bool:
    """GPTQ 4-bit (qweight [K / 8, N] packed along K, qzeros [groups, N / 8], scales [groups, N], g_idx) -> the
    kernel layout, on the layer's device; False (nothing changed) for 8-bit or shapes that do not fit it."""
    from pagoda.model_executor.layers.quantization.gptq_utils import unpack_cols

    if bits != 4:
        return False
    qweight = layer.qweight
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    found = _gptq_groups(layer, k)
    if found is None or not _layout().supports(k, found[2]):
        return False
    perm, first, group = found

    def rows_of(k0: int, k1: int) -> torch.Tensor:
        src = perm[k0:k1] if perm is not None else torch.arange(k0, k1, device=qweight.device)
        shifts = (4 * (src % 8)).to(torch.int32)[:, None]
        return torch.bitwise_right_shift(qweight[src // 8], shifts).bitwise_and_(15)

    packed = _pack_rows(rows_of, k, n, qweight.device)
    used = slice(first, first + k // group)
    zeros = (unpack_cols(layer.qzeros[used], bits) + zero_offset).t()
    _install(layer, packed, layer.scales[used].t(), zeros, perm, group, ("qweight", "qzeros", "scales", "g_idx"))
    return True


def repack_compressed_tensors(layer: nn.Module, bits: int) -> bool:
    """compressed-tensors pack-quantized 4-bit (weight_packed [N, K / 8] packed along K, value i of word c the
    input 8c + i; weight_scale [N, K / G] or [N, 1] per channel; optional weight_zero_point [N / 8, groups] packed
    along N; every value stored + 8) -> the kernel layout, on the layer's device. Channel-wise is one group over
    the input (as GPTQ's -1); symmetric layers get no zeros (the kernels' constant 8 is their stored zero); the
    stored (unsigned) zero points are the layout's zeros as they are. False (nothing changed) for 8-bit weights
    or shapes that do not fit the layout."""
    from pagoda.model_executor.layers.quantization.compressed_tensors_wna16 import (
        unpack_input_packed,
        unpack_output_packed,
    )

    if bits != 4:
        return False
    packed, scale = layer.weight_packed, layer.weight_scale
    n, k, groups = packed.shape[0], packed.shape[1] * 8, scale.shape[1]
    if groups == 0 or k % groups or not _layout().supports(k, k // groups):
        return False
    qweight = _pack_rows(lambda k0, k1: unpack_input_packed(packed[:, k0 // 8:k1 // 8], bits).t(), k, n,
                         packed.device)
    zero_point = getattr(layer, "weight_zero_point", None)
    zeros = None if zero_point is None else unpack_output_packed(zero_point, bits)[:n]
    _install(layer, qweight, scale, zeros, None, k // groups, ("weight_packed", "weight_scale", "weight_zero_point"))
    return True


def int4_matmul(layer: nn.Module, x, bias: torch.Tensor | None, act: nn.Module | None) -> torch.Tensor:
    """act(x @ Wᵀ + bias) (act None: no activation; else SiluAndMul of a [gate | up] weight) for a layer in the
    kernel layout; x a tensor [..., K] or a PendingRMSNorm. The GEMV where int4_gemv_applies, with the norm
    and activation fused; the GEMM otherwise."""
    int4_gemv, int4_gemm, int4_dequantize, int4_gemm_small_m = _kernels()
    perm = layer.int4_perm
    pending = x if isinstance(x, PendingRMSNorm) else None
    if pending is not None and (perm is not None or not tuning.int4_gemv_applies(pending.x) or not tuning.INT4_FUSE_NORM):
        x, pending = pending.materialize(), None
    rows = pending.x if pending is not None else x
    lead = rows.shape[:-1]
    rows = rows.reshape(-1, rows.shape[-1])
    if perm is not None:
        rows = rows.index_select(1, perm)
    weights = (layer.int4_qweight, layer.int4_scales, layer.int4_zeros)
    if tuning.int4_gemv_applies(rows):
        norm = pending.gemv_args() if pending is not None else {}
        out = int4_gemv(rows, *weights, bias, silu_and_mul=act is not None, **norm)
    else:
        if tuning.int4_small_m_applies(rows.shape[0]):
            out = int4_gemm_small_m(rows, *weights, bias)
        elif tuning.int4_dequant_applies(rows.shape[0]) and not _capturing(rows):
            qweight = layer.int4_qweight
            w = _workspace(qweight.shape[0], qweight.shape[1] * 8, rows.dtype, rows.device)
            out = torch.nn.functional.linear(rows, int4_dequantize(*weights, w), bias)
        else:
            out = int4_gemm(rows, *weights, bias)
        if act is not None:
            out = act(out)
    return out.reshape(*lead, out.shape[-1])
