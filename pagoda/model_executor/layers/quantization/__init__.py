"""Quantization: formats by vLLM name, the resolver that picks one for a model, and skip lists.

Entry points: `resolve_quantization(user, hf_config, model_path)` (engine arguments: which method,
with which checkpoint config), `build_quant_config(method, config)` (the loader: the
QuantizationConfig whose `get_linear_method(layer, prefix)` every linear layer asks), and
`QUANTIZATION_METHODS` / `SUPPORTED_METHODS`. Importing this package imports no torch; the configs
themselves (base_config.py, fp8.py, awq.py, gptq.py) do.
"""

from pagoda.model_executor.layers.quantization.registry import (
    NOT_YET_METHODS,
    QUANTIZATION_METHODS,
    SUPPORTED_METHODS,
    get_quantization_config,
)
from pagoda.model_executor.layers.quantization.resolve import (
    build_quant_config,
    check_quantization_name,
    read_checkpoint_quant_config,
    resolve_quantization,
)

__all__ = [
    "NOT_YET_METHODS",
    "QUANTIZATION_METHODS",
    "SUPPORTED_METHODS",
    "build_quant_config",
    "check_quantization_name",
    "get_quantization_config",
    "read_checkpoint_quant_config",
    "resolve_quantization",
]
