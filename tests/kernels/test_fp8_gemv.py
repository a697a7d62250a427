"""The FP8 W8A8 decode GEMV against its torch reference and the FP8 layers' math: the in-kernel quantization bit for
bit fp8_quant's (dynamic per token and static), the product equal to fp8_linear_reference up to fp32 summation
order, split-K, bias, odd N, SiLU·mul of [gate | up] with per-row scales, the fused RMSNorm (+ residual), and the
layer's kernel path equal to its existing path."""

from __future__ import annotations

import pytest
import torch

from pagoda.kernels import tuning
from pagoda.kernels.fp8_gemv import fp8_gemv, fp8_gemv_ref
from pagoda.kernels.fp8_quant import fp8_quantize, fp8_quantize_ref
from pagoda.model_executor.layers.quantization import fp8_utils

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # bf16 loads / fp32 math are fine in the interpreter
NORM_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # the norm rounds to bf16
MANT = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
E4M3 = torch.float8_e4m3fn


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def activations(m, k, dtype, device, seed=0):
    """Rows of very different ranges, a zero row (the floor scale) and values far below a row's amax (subnormals)."""
    x = torch.randn(m, k, generator=_gen(seed)) * torch.logspace(-2, 1, m).unsqueeze(1)
    if m > 1:
        x[1] = 0.0
    x[0, : k // 3] *= 1e-4
    return x.to(dtype).to(device)


def fp8_weight(n, k, device, seed=1, per_row=True):
    """(q_w [n, k] e4m3, w_scale [n, 1] fp32) with rows of different scales."""
    w = torch.randn(n, k, generator=_gen(seed)) * torch.logspace(-1, 1, n).unsqueeze(1)
    scale = (w.abs().amax(1, keepdim=True) if per_row else w.abs().amax().expand(n, 1)) / 448.0
    return fp8_utils.quantize(w, scale).to(device), scale.contiguous().to(device)


def assert_product_close(out, q, s, q_w, w_scale, bias, gated=False):
    """out equals (q·s) @ (q_w·s_w)ᵀ (+ bias) (silu·mul) up to fp32 summation order and one rounding to out's
    dtype."""
    a, b = q.float() * s, q_w.float() * w_scale
    ref = a @ b.t() + (bias.float() if bias is not None else 0)
    err = 1e-6 * (a.abs() @ b.abs().t()) + 1e-30  # fp32 sums of at most a few hundred terms, reordered
    if gated:
        (g, u), (eg, eu) = ref.chunk(2, -1), err.chunk(2, -1)
        ref = torch.nn.functional.silu(g) * u
        err = 1.2 * eg * u.abs() + eu * torch.nn.functional.silu(g).abs()
    bound = err + 2.0 ** -MANT[out.dtype] * ref.abs()
    diff = (out.float() - ref).abs()
    assert bool((diff <= bound).all()), f"max excess {(diff - bound).max().item():.3g}"


def assert_quantized_as_fp8_quant(debug, x, static):
    q_ref, s_ref = fp8_quantize_ref(x, static)
    q_layer, s_layer = fp8_utils.quantize_activation(x, static)
    assert torch.equal(debug["scale"], s_ref) and torch.equal(debug["scale"], s_layer)
    assert torch.equal(debug["q"].view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(debug["q"].view(torch.uint8), q_layer.view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,static,split_k,with_bias", [(1, False, 1, True), (2, True, 3, False),
                                                        (3, False, 3, True), (4, True, 1, True)])
def test_fp8_gemv_equals_reference(device, dtype, m, static, split_k, with_bias):
    k, n = 200, 37  # ragged K, odd N
    x = activations(m, k, dtype, device, seed=m)
    q_w, w_scale = fp8_weight(n, k, device, seed=m + 10)
    bias = torch.randn(n, generator=_gen(3)).to(dtype).to(device) if with_bias else None
    input_scale = torch.tensor([0.004], device=device) if static else None  # some values clamp to ±448
    launch = tuning.GemvLaunch(block_n=8, block_k=32, split_k=split_k, num_warps=2, num_stages=1)
    debug = {}
    out = fp8_gemv(x, q_w, w_scale, input_scale, bias, launch=launch, debug=debug)
    assert out.shape == (m, n) and out.dtype == dtype
    assert_quantized_as_fp8_quant(debug, x, input_scale)
    assert_product_close(out, debug["q"], debug["scale"], q_w, w_scale, bias)
    ref, q_ref, s_ref = fp8_gemv_ref(x, q_w, w_scale, input_scale, bias)
    assert torch.equal(q_ref.view(torch.uint8), debug["q"].view(torch.uint8)) and torch.equal(s_ref, debug["scale"])


@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fp8_gemv_silu_and_mul(device, dtype, split_k):
    """[gate | up] rows, each half with its own per-row scales; silu(gate)·up from the fp32 results (bias too)."""
    k, inter = 96, 21
    x = activations(2, k, dtype, device, seed=5)
    q_w, w_scale = fp8_weight(2 * inter, k, device, seed=6)
    w_scale[inter:] *= 3.0  # up's scales differ from gate's
    bias = torch.randn(2 * inter, generator=_gen(7)).to(dtype).to(device)
    launch = tuning.GemvLaunch(block_n=8, block_k=32, split_k=split_k, num_warps=2, num_stages=1)
    debug = {}
    out = fp8_gemv(x, q_w, w_scale, None, bias, launch=launch, silu_and_mul=True, debug=debug)
    assert out.shape == (2, inter)
    assert_quantized_as_fp8_quant(debug, x, None)
    assert_product_close(out, debug["q"], debug["scale"], q_w, w_scale, bias, gated=True)
    with pytest.raises(ValueError, match="even"):
        fp8_gemv(x, q_w[:-1].contiguous(), w_scale[:-1].contiguous(), silu_and_mul=True)


@pytest.mark.parametrize("m,with_residual,gated,static", [(1, True, False, False), (2, False, True, False),
                                                           (3, True, True, True)])
@pytest.mark.parametrize("dtype", NORM_DTYPES)
def test_fp8_gemv_fused_rms_norm(device, dtype, m, with_residual, gated, static):
    """RMSNorm (+ residual) in the prologue: the quantized rows are bit for bit those of the rmsnorm kernel's
    output (rounded to the activation dtype) through fp8_quantize, the new residual is exact."""
    from pagoda.kernels.rmsnorm import rmsnorm

    k, eps = 1000, 1e-5
    x = activations(m, k, dtype, device, seed=8) * 3
    g = (1 + torch.randn(k, generator=_gen(9)) / 4).to(dtype).to(device)
    residual = torch.randn(m, k, generator=_gen(10)).to(dtype).to(device) if with_residual else None
    residual_out = torch.empty_like(x) if with_residual else None
    q_w, w_scale = fp8_weight(2 * 12 if gated else 29, k, device, seed=11)
    input_scale = torch.tensor([0.01], device=device) if static else None
    launch = tuning.fp8_gemv_launch(m, q_w.shape[0] // (2 if gated else 1), k, gated=gated, norm=True)
    debug = {}
    out = fp8_gemv(x, q_w, w_scale, input_scale, None, launch=launch, silu_and_mul=gated, norm_weight=g, eps=eps,
                   residual=residual, residual_out=residual_out, debug=debug)
    work = residual.clone() if with_residual else None
    normed = rmsnorm(x, g, eps, work)[0] if with_residual else rmsnorm(x, g, eps)
    q_k, s_k = fp8_quantize(normed, input_scale)
    assert torch.equal(debug["q"].view(torch.uint8), q_k.view(torch.uint8)) and torch.equal(debug["scale"], s_k)
    if with_residual:
        assert torch.equal(residual_out, work)
    assert_product_close(out, debug["q"], debug["scale"], q_w, w_scale, None, gated=gated)
    if dtype != torch.bfloat16 or CUDA:  # the torch reference rounds to bf16 correctly; the interpreter truncates
        ref = fp8_gemv_ref(x, q_w, w_scale, input_scale, None, silu_and_mul=gated, norm_weight=g, eps=eps,
                           residual=residual)
        assert torch.equal(ref[1].view(torch.uint8), debug["q"].view(torch.uint8))
        if with_residual:
            assert torch.equal(ref[3], residual_out)


def test_fp8_gemv_tuned_launch_strided_rows_and_errors(device):
    """The default launch (split-K for a narrow N over a long K) on a row-strided x; bad inputs are refused."""
    wide = activations(2, 3000, torch.float32, device, seed=12)
    x = wide[:, :2048]
    q_w, w_scale = fp8_weight(24, 2048, device, seed=13)
    assert tuning.fp8_gemv_launch(2, 24, 2048).split_k > 1
    debug = {}
    out = fp8_gemv(x, q_w, w_scale, debug=debug)
    assert_quantized_as_fp8_quant(debug, x.contiguous(), None)
    assert_product_close(out, debug["q"], debug["scale"], q_w, w_scale, None)
    launch = tuning.fp8_gemv_launch(1, 4096, 4096, norm=True)
    assert launch.num_warps == tuning.row_num_warps(4096) and launch.split_k == 1
    with pytest.raises(ValueError, match="at most"):
        fp8_gemv(torch.zeros(tuning.GEMV_MAX_M + 1, 2048, device=device), q_w, w_scale)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8_gemv(x, q_w.float(), w_scale)
    with pytest.raises(ValueError, match="weight_scale"):
        fp8_gemv(x, q_w, w_scale[:3])
    assert fp8_gemv(x[:0], q_w, w_scale).shape == (0, 24)


# --- the layer: Fp8LinearMethod's kernel path equals its existing path ------------------------------------------
def _fp8_layer(kind, static, dtype):
    from pagoda.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
    from pagoda.model_executor.layers.quantization.fp8 import Fp8Config
    from pagoda.model_executor.model_loader.loader import process_weights_after_loading

    config = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static" if static else "dynamic"})
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if kind == "qkv":
            layer = QKVParallelLinear(64, 16, 4, 2, bias=True, quant_config=config, prefix="qkv")
            pieces = list(zip("qkv", (64, 32, 32)))
        elif kind == "gate_up":
            layer = MergedColumnParallelLinear(64, [40, 40], bias=False, quant_config=config, prefix="gate_up")
            pieces = [(0, 40), (1, 40)]
        else:
            layer = RowParallelLinear(80, 64, bias=False, quant_config=config, prefix="down")
            pieces = [(None, 64)]
    finally:
        torch.set_default_dtype(old)
    k = layer.weight.shape[1]
    for i, (sid, rows) in enumerate(pieces):
        q, scale = fp8_weight(rows, k, "cpu", seed=20 + i)
        args = () if sid is None else (sid,)
        layer.weight_loader(layer.weight, q, *args)
        layer.weight_loader(layer.weight_scale, scale, *args)
        if layer.bias is not None:
            layer.weight_loader(layer.bias, torch.randn(rows, generator=_gen(30 + i)), *args)
        if static:
            layer.weight_loader(layer.input_scale, torch.tensor([0.01 * (i + 1)]), *args)
    process_weights_after_loading(layer)
    return layer


@pytest.mark.parametrize("kind,static,m", [("qkv", False, 1), ("qkv", True, 4), ("down", False, 3),
                                           ("gate_up", False, 2)])
def test_layer_kernel_path_equals_existing_path(kind, static, m):
    from pagoda.model_executor.layers.activation import SiluAndMul
    from pagoda.model_executor.layers.quantization.fp8 import fp8_gemv_matmul

    dtype = torch.float16
    layer = _fp8_layer(kind, static, dtype)
    x = activations(m, layer.weight.shape[1], dtype, "cpu", seed=40)
    assert not tuning.fp8_gemv_applies(x)  # on CPU the layer never takes the kernel path by itself
    act = SiluAndMul() if kind == "gate_up" else None
    method = layer.linear_method
    existing = method.apply(layer, x, layer.bias) if act is None else method.apply_silu_and_mul(layer, x, None, act)
    kernel = fp8_gemv_matmul(layer, x, layer.bias, act)
    assert kernel.shape == existing.shape and kernel.dtype == existing.dtype
    # the existing path rounds the product to fp16 before the activation; the kernel rounds once
    tol = 4e-3 if act is not None else 2.0 ** -10
    torch.testing.assert_close(kernel.float(), existing.float(), rtol=tol, atol=tol * float(existing.abs().max()))


@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_kernel_path_fuses_pending_norm(with_residual):
    from pagoda.model_executor.layers.pending_norm import PendingRMSNorm
    from pagoda.model_executor.layers.quantization.fp8 import Fp8LinearMethod, fp8_gemv_matmul

    dtype = torch.float16
    layer = _fp8_layer("qkv", False, dtype)
    assert Fp8LinearMethod.takes_pending_norm
    x = activations(1, 64, dtype, "cpu", seed=41) * 5
    g = (1 + torch.randn(64, generator=_gen(42)) / 4).to(dtype)
    res = torch.randn(1, 64, generator=_gen(43)).to(dtype) if with_residual else None

    def pending():
        return PendingRMSNorm(x, g, 1e-6, res, torch.empty_like(x) if with_residual else None)

    p_kernel, p_existing = pending(), pending()
    kernel = fp8_gemv_matmul(layer, p_kernel, layer.bias, None)
    existing = layer.linear_method.apply(layer, p_existing, layer.bias)  # CPU: materialized, then quantized
    if with_residual:
        assert torch.equal(p_kernel.residual_out, p_existing.residual_out)
    torch.testing.assert_close(kernel.float(), existing.float(), rtol=2.0 ** -10,
                               atol=2.0 ** -10 * float(existing.abs().max()))
