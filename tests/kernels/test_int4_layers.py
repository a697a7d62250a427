"""AWQ and GPTQ layers on the int4 kernels: after repacking (what process_weights_after_loading does on CUDA),
apply / forward_silu_and_mul on the kernel path (GEMV for few rows, GEMM for more) equal the checkpoint-layout
torch references (awq_linear_reference, gptq_linear_reference) computed before; a PendingRMSNorm (+ residual)
is fused or materialized with the same result; GPTQ sym / asym, v1 / v2, desc_act (rows permuted) and
group_size -1; GPTQ 8-bit, layers outside the layout and CPU layers stay on the torch path."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import tuning
from pagoda.kernels.rmsnorm import rmsnorm_ref
from pagoda.model_executor.layers.activation import SiluAndMul
from pagoda.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm
from pagoda.model_executor.layers.quantization.awq import AwqConfig
from pagoda.model_executor.layers.quantization.awq_utils import awq_linear_reference, pack_int4
from pagoda.model_executor.layers.quantization.gptq import GptqConfig
from pagoda.model_executor.layers.quantization.gptq_utils import gptq_linear_reference
from pagoda.model_executor.layers.quantization.int4_linear import has_int4_layout, repack_awq, repack_gptq
from pagoda.tiny_quantized_models import _gptq_pack

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 3e-3}
GEMV_ROWS = min(3, tuning.INT4_GEMV_USE_MAX_M) or 1


def make_layer(cls, *args, config, dtype, **kwargs):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls(*args, quant_config=config, **kwargs)
    finally:
        torch.set_default_dtype(old)


def load(layer, tensors: dict) -> None:
    for name, tensor in tensors.items():
        param = getattr(layer, name)
        param.weight_loader(param, tensor.to(param.dtype) if tensor.is_floating_point() else tensor)


def awq_tensors(k: int, n: int, group: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"qweight": pack_int4(torch.randint(0, 16, (k, n), generator=gen)),
            "qzeros": pack_int4(torch.randint(0, 16, (k // group, n), generator=gen)),
            "scales": torch.rand(k // group, n, generator=gen) * 0.02 + 0.005}


def gptq_tensors(k: int, n: int, group: int, seed: int, *, bits: int = 4, sym: bool = False, v1: bool = True,
                 desc_act: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    top = (1 << bits) - 1
    zeros = torch.full((k // group, n), 1 << (bits - 1)) if sym else torch.randint(1, top, (k // group, n), generator=gen)
    out = {"qweight": _gptq_pack(torch.randint(0, top + 1, (k, n), generator=gen), bits, 0),
           "qzeros": _gptq_pack(zeros - 1 if v1 else zeros, bits, 1),
           "scales": torch.rand(k // group, n, generator=gen) * 0.02 + 0.005}
    if desc_act:  # act order: every group still has `group` rows, in a shuffled order
        out["g_idx"] = (torch.randperm(k, generator=gen) // group).to(torch.int32)
    return out


def reference(layer, x):
    if hasattr(layer, "awq_group_size"):
        return awq_linear_reference(x, layer.qweight, layer.qzeros, layer.scales, layer.awq_group_size, None)
    config = layer.linear_method.config
    return gptq_linear_reference(x, layer.qweight, layer.qzeros, layer.scales, getattr(layer, "g_idx", None),
                                 config.weight_bits, config.zero_offset, None)


def check_kernel_path(layer, repack, k: int, dtype, bias=None, rows=(GEMV_ROWS, 7, max(40, tuning.INT4_DEQUANT_MIN_M))):
    """References before repacking, kernel outputs after, for a GEMV-, a GEMM- and a dequant-sized batch."""
    xs = [torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype).to(DEVICE) for m in rows]
    refs = [reference(layer, x) + (0 if bias is None else bias.to(dtype)) for x in xs]
    assert repack(layer) and has_int4_layout(layer)
    assert not hasattr(layer, "qweight") and layer.int4_qweight.shape[1] == k // 8
    for x, ref in zip(xs, refs):
        out = layer(x)
        assert out.dtype == dtype and out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_awq_qkv_layer_on_the_kernels(dtype):
    layer = make_layer(QKVParallelLinear, 256, 16, 4, 2, bias=True, config=AwqConfig(32), dtype=dtype,
                       prefix="qkv_proj")
    for shard, n in (("q", 64), ("k", 32), ("v", 32)):
        for name, tensor in awq_tensors(256, n, 32, seed=len(shard) + n).items():
            param = getattr(layer, name)
            param.weight_loader(param, tensor.to(param.dtype) if tensor.is_floating_point() else tensor, shard)
    layer.bias.data.copy_(torch.randn(128))
    layer.to(DEVICE)
    check_kernel_path(layer, repack_awq, 256, dtype, bias=layer.bias.detach().clone())


def test_awq_row_parallel_group_minus_one():
    layer = make_layer(RowParallelLinear, 384, 24, bias=False, config=AwqConfig(-1), dtype=torch.float32,
                       prefix="o_proj")
    load(layer, awq_tensors(384, 24, 384, seed=3))
    layer.to(DEVICE)
    check_kernel_path(layer, repack_awq, 384, torch.float32)
    assert layer.int4_group_size == 384 and layer.int4_scales.shape == (24, 1)


@pytest.mark.parametrize("fuse_norm", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_awq_gate_up_fuses_pending_norm_and_silu(residual, fuse_norm, monkeypatch):
    """forward_silu_and_mul of a pending RMSNorm (+ residual): the GEMV fuses the SiLU·mul, and the norm too when
    tuning.INT4_FUSE_NORM (else the norm is materialized first); the result and the new residual equal norm ->
    reference matmul -> SiLU·mul either way."""
    import pagoda.kernels.int4_gemv as int4_gemv_module

    monkeypatch.setattr(tuning, "INT4_FUSE_NORM", fuse_norm)
    calls = []
    real_gemv = int4_gemv_module.int4_gemv
    monkeypatch.setattr(int4_gemv_module, "int4_gemv", lambda *a, **kw: calls.append(kw) or real_gemv(*a, **kw))
    dtype = torch.float16
    layer = make_layer(MergedColumnParallelLinear, 256, [40, 40], bias=False, config=AwqConfig(128), dtype=dtype,
                       prefix="gate_up_proj")
    load(layer, awq_tensors(256, 80, 128, seed=4))
    layer.to(DEVICE)
    gen = torch.Generator().manual_seed(5)
    x, res = (torch.randn(1, 256, generator=gen).to(dtype).to(DEVICE) for _ in range(2))
    w = (torch.rand(256, generator=gen) + 0.5).to(dtype).to(DEVICE)
    normed = rmsnorm_ref(x, w, 1e-5, res if residual else None)
    normed, new_res = normed if residual else (normed, None)
    ref = SiluAndMul()(reference(layer, normed))
    assert repack_awq(layer)
    pending = PendingRMSNorm(x, w, 1e-5, res if residual else None, torch.empty_like(x) if residual else None)
    out = layer.forward_silu_and_mul(pending, SiluAndMul())
    torch.testing.assert_close(out, ref, atol=3e-3, rtol=3e-3)
    assert [("norm_weight" in kw, kw["silu_and_mul"]) for kw in calls] == [(fuse_norm, True)]
    if residual:
        torch.testing.assert_close(pending.residual_out, new_res, atol=0, rtol=0)
    # a GEMM-sized batch: the activation after the GEMM
    x8 = torch.randn(8, 256, generator=gen).to(dtype).to(DEVICE)
    out8 = layer.forward_silu_and_mul(x8, SiluAndMul())
    assert out8.shape == (8, 40)


@pytest.mark.parametrize("sym,v1,group", [(True, True, 32), (False, False, 128), (False, True, -1)])
def test_gptq_layers_on_the_kernels(sym, v1, group):
    config = GptqConfig(4, group, desc_act=False, sym=sym, checkpoint_format="gptq" if v1 else "gptq_v2")
    layer = make_layer(MergedColumnParallelLinear, 256, [32, 32], bias=False, config=config, dtype=torch.float32,
                       prefix="gate_up_proj")
    load(layer, gptq_tensors(256, 64, 256 if group == -1 else group, seed=6, sym=sym, v1=v1))
    layer.to(DEVICE)
    check_kernel_path(layer, repack_gptq_for(config), 256, torch.float32)
    assert (layer.int4_zeros is None) == sym  # symmetric: the kernels' constant zero 8, no zeros tensor


def repack_gptq_for(config):
    return lambda layer: repack_gptq(layer, config.weight_bits, config.zero_offset)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gptq_desc_act_rows_are_permuted(dtype):
    """Act order: rows sorted by g_idx at load time, x gathered per call; a pending norm is materialized."""
    config = GptqConfig(4, 64, desc_act=True, sym=False)
    layer = make_layer(QKVParallelLinear, 256, 16, 2, 1, bias=False, config=config, dtype=dtype, prefix="qkv_proj")
    tensors = gptq_tensors(256, 64, 64, seed=7, desc_act=True)
    for shard, cols in (("q", slice(0, 32)), ("k", slice(32, 48)), ("v", slice(48, 64))):
        piece = {"qweight": tensors["qweight"][:, cols], "qzeros": tensors["qzeros"][:, cols.start // 8:cols.stop // 8],
                 "scales": tensors["scales"][:, cols], "g_idx": tensors["g_idx"]}
        for name, tensor in piece.items():
            param = getattr(layer, name)
            param.weight_loader(param, tensor.to(param.dtype) if tensor.is_floating_point() else tensor, shard)
    layer.to(DEVICE)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(1, 256, generator=gen).to(dtype).to(DEVICE)
    w = (torch.rand(256, generator=gen) + 0.5).to(dtype).to(DEVICE)
    ref_norm = reference(layer, rmsnorm_ref(x, w, 1e-6))
    check_kernel_path(layer, repack_gptq_for(config), 256, dtype)
    assert layer.int4_perm is not None
    out = layer(PendingRMSNorm(x, w, 1e-6, None, None))
    torch.testing.assert_close(out, ref_norm, atol=TOL[dtype], rtol=TOL[dtype])


def test_layers_that_stay_on_the_torch_path():
    """GPTQ 8-bit, an input size outside the layout (K % 128 != 0), and CPU layers after loading."""
    eight = GptqConfig(8, 32)
    layer = make_layer(RowParallelLinear, 128, 16, bias=False, config=eight, dtype=torch.float32, prefix="o_proj")
    load(layer, gptq_tensors(128, 16, 32, seed=9, bits=8))
    assert not repack_gptq(layer, 8, eight.zero_offset) and not has_int4_layout(layer)
    odd = make_layer(RowParallelLinear, 96, 16, bias=False, config=AwqConfig(32), dtype=torch.float32, prefix="o_proj")
    load(odd, awq_tensors(96, 16, 32, seed=10))
    assert not repack_awq(odd) and hasattr(odd, "qweight")
    cpu = make_layer(RowParallelLinear, 128, 16, bias=False, config=AwqConfig(32), dtype=torch.float32, prefix="o_proj")
    load(cpu, awq_tensors(128, 16, 32, seed=11))
    cpu.linear_method.process_weights_after_loading(cpu)  # on CPU: nothing changes
    assert hasattr(cpu, "qweight") and not has_int4_layout(cpu)
    x = torch.randn(2, 128)
    torch.testing.assert_close(cpu(x), reference(cpu, x))


@pytest.mark.parametrize("act", [False, True])
def test_small_batches_take_the_small_m_gemm_when_on(act, monkeypatch):
    """With tuning.INT4_SMALL_M_USE_MAX_M on, 3-16 rows run the operand-swapped small-batch GEMM (the activation
    after it), still equal to the reference; more rows keep the other paths."""
    import pagoda.kernels.int4_gemm_small_m as small_m_module

    monkeypatch.setattr(tuning, "INT4_SMALL_M_USE_MAX_M", tuning.INT4_SMALL_M_MAX)
    calls = []
    real = small_m_module.int4_gemm_small_m
    monkeypatch.setattr(small_m_module, "int4_gemm_small_m", lambda x, *a, **kw: calls.append(x.shape[0]) or real(x, *a, **kw))
    dtype = torch.float16
    layer = make_layer(MergedColumnParallelLinear, 256, [40, 40], bias=False, config=AwqConfig(128), dtype=dtype,
                       prefix="gate_up_proj")
    load(layer, awq_tensors(256, 80, 128, seed=14))
    layer.to(DEVICE)
    xs = [torch.randn(m, 256, generator=torch.Generator().manual_seed(m)).to(dtype).to(DEVICE) for m in (7, 17)]
    refs = [reference(layer, x) for x in xs]
    assert repack_awq(layer)
    for x, ref in zip(xs, refs):
        out = layer.forward_silu_and_mul(x, SiluAndMul()) if act else layer(x)
        torch.testing.assert_close(out, SiluAndMul()(ref) if act else ref, atol=3e-3, rtol=3e-3)
    assert calls == [7]
