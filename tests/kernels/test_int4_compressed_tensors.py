"""compressed-tensors W4A16 (pack-quantized) layers on the int4 kernels: after repacking (what
process_weights_after_loading does on CUDA; on CPU the tests call repack_compressed_tensors, and the kernels run
through Triton's interpreter), apply / forward_silu_and_mul on the kernel path (GEMV for few rows, GEMM for more,
dequant + F.linear for prefill-sized batches) equal compressed_tensors_wna16's reference, dequantize_wna16 then a
matmul, computed before: groups of 32 and 128 and per channel, symmetric and asymmetric, a fused qkv layer loaded
piece by piece, a row-parallel layer, and gate_up with a pending RMSNorm (+ residual) and SiLU·mul fused.
W8A16, shapes outside the int4 layout and CPU layers stay on the torch path."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import tuning
from pagoda.kernels.rmsnorm import rmsnorm_ref
from pagoda.model_executor.layers.activation import SiluAndMul
from pagoda.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm
from pagoda.model_executor.layers.quantization.compressed_tensors import CompressedTensorsConfig
from pagoda.model_executor.layers.quantization.compressed_tensors_wna16 import WNA16LinearMethod, dequantize_wna16
from pagoda.model_executor.layers.quantization.int4_linear import has_int4_layout, repack_compressed_tensors
from pagoda.tiny_compressed_tensors import _pack, quantization_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 3e-3}
GEMV_ROWS = min(3, tuning.INT4_GEMV_USE_MAX_M) or 1
ROWS = (GEMV_ROWS, 7, max(40, tuning.INT4_DEQUANT_MIN_M))  # GEMV, GEMM, dequant + F.linear


def ct_config(group: int | None, sym: bool, bits: int = 4) -> CompressedTensorsConfig:
    """The config llm-compressor writes for W4A16 / W8A16, per group of `group` inputs (None: per channel)."""
    scheme = "W4A16" if bits == 4 else "W8A16"
    return CompressedTensorsConfig.from_config(quantization_config(scheme, group, sym, "channel", "dynamic", []))


def make_layer(cls, *args, config, dtype, **kwargs):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        layer = cls(*args, quant_config=config, **kwargs)
    finally:
        torch.set_default_dtype(old)
    assert isinstance(layer.linear_method, WNA16LinearMethod)
    return layer


def ct_tensors(n: int, k: int, group: int | None, sym: bool, seed: int, bits: int = 4) -> dict:
    """Random checkpoint tensors of one [n, k] piece: stored (unsigned, + 2^(bits-1)) values packed along the
    input, scales per group, zero points packed along the output when asymmetric."""
    gen = torch.Generator().manual_seed(seed)
    top, groups = (1 << bits) - 1, 1 if group is None else k // group
    out = {"weight_packed": _pack(torch.randint(0, top + 1, (n, k), generator=gen), bits),
           "weight_scale": torch.rand(n, groups, generator=gen) * 0.02 + 0.005}
    if not sym:
        zeros = torch.randint(0, top + 1, (n, groups), generator=gen)
        out["weight_zero_point"] = _pack(zeros.t(), bits).t().contiguous()
    return out


def load(layer, tensors: dict, shard=None) -> None:
    for name, tensor in tensors.items():
        param = getattr(layer, name)
        tensor = tensor.to(param.dtype) if tensor.is_floating_point() else tensor
        param.weight_loader(param, tensor) if shard is None else param.weight_loader(param, tensor, shard)


def reference(layer, x: torch.Tensor) -> torch.Tensor:
    """x @ dequantize_wna16(checkpoint tensors)ᵀ + bias in fp32, rounded once (the layer not yet repacked)."""
    w = dequantize_wna16(layer.weight_packed, layer.weight_scale, getattr(layer, "weight_zero_point", None),
                         layer.linear_method.bits, torch.float32)
    y = x.float() @ w.t()
    return (y if layer.bias is None else y + layer.bias.float()).to(x.dtype)


def to_kernel_layout(layer) -> bool:
    """What process_weights_after_loading does on CUDA (there it is called; on CPU the repack is called directly)."""
    if DEVICE == "cuda":
        layer.linear_method.process_weights_after_loading(layer)
        return has_int4_layout(layer)
    return repack_compressed_tensors(layer, layer.linear_method.bits)


def check_kernel_path(layer, k: int, dtype) -> None:
    """References (and the torch path) before repacking, kernel outputs after, for each batch size in ROWS."""
    xs = [torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype).to(DEVICE) for m in ROWS]
    refs = [reference(layer, x) for x in xs]
    for x, ref in zip(xs, refs):
        torch.testing.assert_close(layer(x), ref, atol=TOL[dtype], rtol=TOL[dtype])  # the torch path
    assert to_kernel_layout(layer) and has_int4_layout(layer)
    assert not hasattr(layer, "weight_packed") and not hasattr(layer, "weight_zero_point")
    assert layer.int4_qweight.shape[1] == k // 8
    for x, ref in zip(xs, refs):
        out = layer(x)
        assert out.dtype == dtype and out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])


QKV_CASES = [(32, True, torch.float32), (32, False, torch.float32), (128, False, torch.float32),
             (None, True, torch.float32), (None, False, torch.float32), (128, True, torch.float16)]


@pytest.mark.parametrize("group,sym,dtype", QKV_CASES,
                         ids=[f"g{g or 'chan'}-{'sym' if s else 'asym'}-{str(d)[6:]}" for g, s, d in QKV_CASES])
def test_qkv_layer_on_the_kernels(group, sym, dtype):
    """A fused qkv layer loaded piece by piece (zero points at the pieces' packed offsets along the output)."""
    layer = make_layer(QKVParallelLinear, 256, 16, 4, 2, bias=True, config=ct_config(group, sym), dtype=dtype,
                       prefix="qkv_proj")
    for shard, n in (("q", 64), ("k", 32), ("v", 32)):
        load(layer, ct_tensors(n, 256, group, sym, seed=len(shard) + n), shard)
    layer.bias.data.copy_(torch.randn(128, generator=torch.Generator().manual_seed(1)))
    layer.to(DEVICE)
    check_kernel_path(layer, 256, dtype)
    assert layer.int4_group_size == (group or 256)
    assert (layer.int4_zeros is None) == sym  # symmetric: the kernels' constant zero 8


def test_row_parallel_channel_wise():
    layer = make_layer(RowParallelLinear, 384, 24, bias=False, config=ct_config(None, False), dtype=torch.float32,
                       prefix="o_proj")
    load(layer, ct_tensors(24, 384, None, False, seed=3))
    layer.to(DEVICE)
    check_kernel_path(layer, 384, torch.float32)
    assert layer.int4_group_size == 384 and layer.int4_scales.shape == (24, 1) and layer.int4_zeros.shape == (24, 1)


@pytest.mark.parametrize("group,sym,residual", [(32, False, True), (None, True, False)])
def test_gate_up_fuses_pending_norm_and_silu(group, sym, residual):
    """forward_silu_and_mul of a pending RMSNorm (+ residual): fused into the GEMV (one row), materialized before
    the GEMM (8 rows); both equal norm -> reference matmul -> SiLU·mul, and the new residual is exact."""
    dtype, act = torch.float16, SiluAndMul()
    layer = make_layer(MergedColumnParallelLinear, 256, [40, 40], bias=False, config=ct_config(group, sym),
                       dtype=dtype, prefix="gate_up_proj")
    for shard in (0, 1):
        load(layer, ct_tensors(40, 256, group, sym, seed=4 + shard), shard)
    layer.to(DEVICE)
    gen = torch.Generator().manual_seed(5)
    w = (torch.rand(256, generator=gen) + 0.5).to(dtype).to(DEVICE)
    cases = []
    for m in (1, 8):
        x, res = (torch.randn(m, 256, generator=gen).to(dtype).to(DEVICE) for _ in range(2))
        normed = rmsnorm_ref(x, w, 1e-5, res if residual else None)
        normed, new_res = normed if residual else (normed, None)
        cases.append((x, res, new_res, act(reference(layer, normed))))
    assert to_kernel_layout(layer)
    for x, res, new_res, ref in cases:
        pending = PendingRMSNorm(x, w, 1e-5, res if residual else None, torch.empty_like(x) if residual else None)
        out = layer.forward_silu_and_mul(pending, act)
        torch.testing.assert_close(out, ref, atol=3e-3, rtol=3e-3)
        if residual:
            torch.testing.assert_close(pending.residual_out, new_res, atol=0, rtol=0)


def test_layers_that_stay_on_the_torch_path():
    """W8A16, a group size outside the layout (96), K % 128 != 0, and CPU layers after loading; the torch path
    takes a pending norm (materialized) and SiLU·mul."""
    eight = make_layer(RowParallelLinear, 128, 16, bias=False, config=ct_config(32, False, bits=8),
                       dtype=torch.float32, prefix="o_proj")
    load(eight, ct_tensors(16, 128, 32, False, seed=9, bits=8))
    assert not repack_compressed_tensors(eight, 8) and hasattr(eight, "weight_packed")
    odd_group = make_layer(RowParallelLinear, 384, 16, bias=False, config=ct_config(96, True), dtype=torch.float32,
                           prefix="o_proj")
    load(odd_group, ct_tensors(16, 384, 96, True, seed=10))
    odd_k = make_layer(RowParallelLinear, 192, 16, bias=False, config=ct_config(64, False), dtype=torch.float32,
                       prefix="o_proj")
    load(odd_k, ct_tensors(16, 192, 64, False, seed=11))
    for layer in (odd_group, odd_k):
        assert not repack_compressed_tensors(layer, 4) and hasattr(layer, "weight_packed")
    cpu = make_layer(MergedColumnParallelLinear, 128, [16, 16], bias=False, config=ct_config(32, False),
                     dtype=torch.float32, prefix="gate_up_proj")
    for shard in (0, 1):
        load(cpu, ct_tensors(16, 128, 32, False, seed=12 + shard), shard)
    cpu.linear_method.process_weights_after_loading(cpu)  # on CPU: nothing changes
    assert hasattr(cpu, "weight_packed") and not has_int4_layout(cpu)
    gen = torch.Generator().manual_seed(13)
    x, w = torch.randn(2, 128, generator=gen), torch.rand(128, generator=gen) + 0.5
    torch.testing.assert_close(cpu(x), reference(cpu, x))
    if torch.cuda.is_available():  # a CPU tensor is never left pending there (pending_norm's invariant)
        return
    normed = rmsnorm_ref(x, w, 1e-6)
    out = cpu.forward_silu_and_mul(PendingRMSNorm(x, w, 1e-6, None, None), SiluAndMul())
    torch.testing.assert_close(out, SiluAndMul()(reference(cpu, normed)), atol=1e-5, rtol=1e-5)
