"""FP8 linear layers against a dequantized reference written here: each fused piece keeps its own checkpoint
scale (per tensor or per channel, whatever shape the checkpoint stores it in), static input scales of
fused pieces become their maximum, a fused checkpoint tensor splits into its pieces, load-time
quantization uses one scale per (fused) weight, and malformed tensors are refused."""

from __future__ import annotations

import pytest
import torch

from pagoda.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from pagoda.model_executor.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod
from pagoda.model_executor.model_loader.loader import process_weights_after_loading

FP8_MAX = 448.0
HIDDEN, HEAD, HEADS, KV_HEADS = 64, 16, 4, 2  # q 64 rows, k and v 32 rows each


def quantize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def fake_quant_rows(x: torch.Tensor, static: float | None = None) -> torch.Tensor:
    scale = torch.tensor(static) if static is not None else (x.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(
        min=1 / (FP8_MAX * 512))
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def piece(rows: int, cols: int, seed: int, channel: bool):
    """(fp8 weight, its scale as a checkpoint stores it, the dequantized weight)."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * (1 + seed)
    scale = (w.abs().amax(1, keepdim=True) if channel else w.abs().amax()) / FP8_MAX
    q = quantize(w, scale)
    return q, scale, q.float() * scale


def static_config() -> Fp8Config:
    return Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static"})


def dynamic_config() -> Fp8Config:
    return Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "dynamic"})


@pytest.mark.parametrize("scale_shape", ["scalar", "one", "channel", "channel_1d"])
def test_qkv_pieces_keep_their_scales(scale_shape):
    layer = QKVParallelLinear(HIDDEN, HEAD, HEADS, KV_HEADS, bias=True, quant_config=dynamic_config(), prefix="qkv")
    assert isinstance(layer.linear_method, Fp8LinearMethod) and layer.weight.dtype == torch.float8_e4m3fn
    channel = scale_shape.startswith("channel")
    dequantized, biases = [], []
    for i, (sid, rows) in enumerate(zip("qkv", (HEADS * HEAD, KV_HEADS * HEAD, KV_HEADS * HEAD))):
        q, scale, deq = piece(rows, HIDDEN, i, channel)
        stored = {"scalar": lambda: scale.reshape(()), "one": lambda: scale.reshape(1), "channel": lambda: scale,
                  "channel_1d": lambda: scale.reshape(-1)}[scale_shape]()
        layer.weight_loader(layer.weight, q, sid)
        layer.weight_loader(layer.weight_scale, stored, sid)
        bias = torch.randn(rows)
        layer.weight_loader(layer.bias, bias, sid)
        dequantized.append(deq)
        biases.append(bias)
    process_weights_after_loading(layer)
    x = torch.randn(5, HIDDEN)
    expected = fake_quant_rows(x) @ torch.cat(dequantized).t() + torch.cat(biases)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-4)


def test_merged_static_input_scale_is_the_largest_piece_scale():
    layer = MergedColumnParallelLinear(HIDDEN, [96, 96], bias=False, quant_config=static_config(), prefix="gate_up")
    dequantized = []
    for i, input_scale in enumerate((0.01, 0.03)):
        q, scale, deq = piece(96, HIDDEN, i, channel=True)
        layer.weight_loader(layer.weight, q, i)
        layer.weight_loader(layer.weight_scale, scale, i)
        layer.weight_loader(layer.input_scale, torch.tensor([input_scale]), i)
        dequantized.append(deq)
    process_weights_after_loading(layer)
    assert layer.input_scale.tolist() == [pytest.approx(0.03)]
    x = torch.randn(3, 7, HIDDEN) * 2  # some entries clip at ±448 · 0.03
    expected = fake_quant_rows(x, 0.03) @ torch.cat(dequantized).t()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channel", [False, True])
def test_fused_checkpoint_tensor_splits_into_pieces(channel):
    """GPT-2 stores c_attn fused: its weight splits by rows; one per-tensor scale holds for every piece."""
    layer = QKVParallelLinear(HIDDEN, HEAD, HEADS, HEADS, bias=False, quant_config=dynamic_config())
    q, scale, deq = piece(3 * HEADS * HEAD, HIDDEN, 3, channel)
    layer.weight_loader(layer.weight, q)
    layer.weight_loader(layer.weight_scale, scale)
    assert layer.weight.loaded_shards == {"q", "k", "v"} == layer.weight_scale.loaded_shards
    process_weights_after_loading(layer)
    x = torch.randn(4, HIDDEN)
    torch.testing.assert_close(layer(x), fake_quant_rows(x) @ deq.t(), rtol=1e-5, atol=1e-4)


def test_row_parallel_and_replicated_take_per_channel_scales():
    x = torch.randn(6, 128)
    for cls in (RowParallelLinear, ReplicatedLinear):
        layer = cls(128, 48, bias=True, quant_config=static_config())
        q, scale, deq = piece(48, 128, 1, channel=True)
        for param, tensor in ((layer.weight, q), (layer.weight_scale, scale.reshape(-1)),
                              (layer.input_scale, torch.tensor(0.02))):
            param.weight_loader(param, tensor)  # what load_named_weight calls
        bias = torch.randn(48)
        layer.bias.weight_loader(layer.bias, bias)
        process_weights_after_loading(layer)
        torch.testing.assert_close(layer(x), fake_quant_rows(x, 0.02) @ deq.t() + bias, rtol=1e-5, atol=1e-4)


def test_load_time_quantization_uses_one_scale_per_fused_weight():
    layer = MergedColumnParallelLinear(HIDDEN, [80, 80], bias=False, quant_config=Fp8Config.online())
    assert layer.weight.dtype == torch.float32  # loaded in the model dtype, quantized after loading
    pieces = [torch.randn(80, HIDDEN) * s for s in (1.0, 3.0)]
    for i, w in enumerate(pieces):
        layer.weight_loader(layer.weight, w, i)
    process_weights_after_loading(layer)
    fused = torch.cat(pieces)
    scale = fused.abs().max() / FP8_MAX
    assert layer.weight.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(layer.weight_scale, scale.expand(160, 1))
    x = torch.randn(5, HIDDEN)
    expected = fake_quant_rows(x) @ (quantize(fused, scale).float() * scale).t()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-4)


def test_zero_rows_quantize_to_zero_not_nan():
    layer = RowParallelLinear(64, 32, bias=False, quant_config=dynamic_config())
    q, scale, _ = piece(32, 64, 0, channel=False)
    layer.weight_loader(layer.weight, q)
    layer.weight_loader(layer.weight_scale, scale)
    process_weights_after_loading(layer)
    out = layer(torch.zeros(3, 64))
    assert torch.equal(out, torch.zeros(3, 32))


@pytest.mark.parametrize("bad, message", [
    (torch.rand(33, 1), r"\(33, 1\) does not match the expected one value \(per tensor\) or \(32, 1\)"),
    (torch.rand(1, 32), r"\(1, 32\) does not match"),  # a transposed per-channel scale
    (torch.rand(2), r"\(2,\) does not match"),
])
def test_wrongly_shaped_scales_are_refused(bad, message):
    layer = QKVParallelLinear(HIDDEN, HEAD, HEADS, KV_HEADS, bias=False, quant_config=dynamic_config())
    with pytest.raises(ValueError, match=message):
        layer.weight_loader(layer.weight_scale, bad, "k")


def test_fp8_and_float_tensors_do_not_mix():
    quantized = RowParallelLinear(64, 32, bias=False, quant_config=dynamic_config())
    with pytest.raises(ValueError, match="holds torch.float8_e4m3fn.*skip list"):
        quantized.weight_loader(quantized.weight, torch.randn(32, 64))
    plain = RowParallelLinear(64, 32, bias=False)
    assert isinstance(plain.linear_method, UnquantizedLinearMethod)
    with pytest.raises(ValueError, match="float8_e4m3fn but this layer is not quantized"):
        plain.weight_loader(plain.weight, torch.randn(32, 64).to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="per-tensor scale has one value"):
        static = RowParallelLinear(64, 32, bias=False, quant_config=static_config())
        static.weight_loader(static.input_scale, torch.rand(2))


def test_bad_scale_values_name_the_tensor():
    layer = RowParallelLinear(64, 32, bias=False, quant_config=dynamic_config(), prefix="model.layers.0.mlp.down_proj")
    q, scale, _ = piece(32, 64, 0, channel=False)
    layer.weight_loader(layer.weight, q)
    layer.weight_loader(layer.weight_scale, torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="'model.layers.0.mlp.down_proj.weight_scale': FP8 scales must be finite"):
        process_weights_after_loading(layer)
