"""GPU only (skipped without CUDA): the FP8 `torch._scaled_mm` path equals the torch reference math it
replaces, and an FP8 model generates the same tokens with CUDA graphs as eagerly.

Run on the GPU machine: python -m pytest -q tests/quantization/test_fp8_gpu.py -p no:cacheprovider
"""

from __future__ import annotations

import pytest
import torch

needs_fp8_gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                                   reason="needs a CUDA GPU of compute capability 8.9+ (FP8 tensor cores)")


@needs_fp8_gpu
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("channel", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
def test_scaled_mm_equals_reference(static, channel, rows):
    from pagoda.model_executor.layers.linear import QKVParallelLinear
    from pagoda.model_executor.layers.quantization.fp8 import Fp8Config
    from pagoda.model_executor.layers.quantization.fp8_utils import (
        fp8_linear_reference,
        quantize_activation,
    )
    from pagoda.model_executor.model_loader.loader import process_weights_after_loading

    config = Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "static" if static else "dynamic"})
    torch.manual_seed(0)
    with torch.device("cuda"):
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            layer = QKVParallelLinear(256, 64, 8, 2, bias=True, quant_config=config)
        finally:
            torch.set_default_dtype(old)
        for sid, n in zip("qkv", (512, 128, 128)):
            w = torch.randn(n, 256)
            scale = (w.abs().amax(1, keepdim=True) if channel else w.abs().amax()) / 448
            layer.weight_loader(layer.weight, (w / scale).to(torch.float8_e4m3fn), sid)
            layer.weight_loader(layer.weight_scale, scale, sid)
            layer.weight_loader(layer.bias, torch.randn(n), sid)
            if static:
                layer.weight_loader(layer.input_scale, torch.tensor([0.01]), sid)
        process_weights_after_loading(layer)
        assert layer.fp8_scaled_mm
        x = torch.randn(rows, 256, dtype=torch.bfloat16)
        out = layer(x)
        q, s = quantize_activation(x, layer.input_scale)
        ref = fp8_linear_reference(q, s, layer.weight, layer.weight_scale, layer.bias, torch.float32)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


@needs_fp8_gpu
@pytest.mark.parametrize("kind", ["checkpoint", "online"])
def test_fp8_model_with_cuda_graphs_equals_eager(kind, fp8_checkpoint, float_checkpoint, prompt_ids):
    from pagoda import LLM, SamplingParams

    folder = fp8_checkpoint("LlamaForCausalLM", weight_scales="channel") if kind == "checkpoint" else \
        float_checkpoint("LlamaForCausalLM")
    quantization = "fp8" if kind == "online" else None
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    outputs = []
    for eager in (True, False):
        llm = LLM(folder, dtype="bfloat16", quantization=quantization, enforce_eager=eager, max_model_len=128,
                  gpu_memory_utilization=0.3)
        outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        outputs.append([list(o.outputs[0].token_ids) for o in outs])
        del llm
        torch.cuda.empty_cache()
    assert outputs[0] == outputs[1]
