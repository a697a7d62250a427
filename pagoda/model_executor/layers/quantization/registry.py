"""The quantization methods by vLLM name: those Pagoda implements, and those it knows but has not built.

Invariants:
- `QUANTIZATION_METHODS` is every name `quantization=` / `--quantization` accepts without "unknown":
  vLLM's current names plus older ones scripts still pass. A name is in exactly one of
  `SUPPORTED_METHODS` (a QuantizationConfig class, imported on first use) or `NOT_YET_METHODS`.
- Names are compared lowercased, with "compressed_tensors" read as "compressed-tensors" (vLLM does).
- Nothing here imports torch: the engine arguments check names before any model is built.
"""

from __future__ import annotations

import importlib
from typing import Any

SUPPORTED_METHODS: dict[str, str] = {
    "fp8": "pagoda.model_executor.layers.quantization.fp8:Fp8Config",
    "awq": "pagoda.model_executor.layers.quantization.awq:AwqConfig",
    "gptq": "pagoda.model_executor.layers.quantization.gptq:GptqConfig",
    "compressed-tensors": "pagoda.model_executor.layers.quantization.compressed_tensors:CompressedTensorsConfig",
}
# vLLM 0.17's QuantizationMethods (less fp8, awq, gptq and compressed-tensors), then names of earlier releases.
NOT_YET_METHODS: tuple[str, ...] = (
    "ptpc_fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "bitblas", "gguf", "gptq_marlin_24",
    "gptq_marlin", "gptq_bitblas", "awq_marlin", "bitsandbytes", "experts_int8", "ipex",
    "quark", "moe_wna16", "torchao", "inc", "mxfp4", "mxfp8", "petit_nvfp4", "cpu_awq",
    "aqlm", "deepspeedfp", "tpu_int8", "deepgemm_fp8", "marlin", "qqq", "hqq", "neuron_quant", "auto-round",
)
QUANTIZATION_METHODS: tuple[str, ...] = (*SUPPORTED_METHODS, *NOT_YET_METHODS)
NOT_YET_REASON = ("only FP8, AWQ (GEMM layout), GPTQ and compressed-tensors (W4A16 / W8A16, W8A8 FP8 and int8) are "
                  "implemented so far; the others come later")
# A user's method that may serve a checkpoint of another (vLLM's override_quantization_method pairs).
COMPATIBLE_METHODS: dict[str, tuple[str, ...]] = {
    "gptq": ("gptq_marlin", "gptq_bitblas", "gptq_marlin_24", "marlin", "moe_wna16"),
    "awq": ("awq_marlin", "moe_wna16", "cpu_awq"),
    "auto-round": ("inc",),
}


def normalize_method(name: str) -> str:
    return name.strip().lower().replace("compressed_tensors", "compressed-tensors")


def get_quantization_config(name: str) -> Any:
    """The QuantizationConfig class of an implemented method."""
    entry = SUPPORTED_METHODS.get(name)
    if entry is None:
        raise ValueError(f"quantization method {name!r} is not implemented; implemented: {list(SUPPORTED_METHODS)}")
    module, cls = entry.split(":")
    return getattr(importlib.import_module(module), cls)
