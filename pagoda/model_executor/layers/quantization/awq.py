"""AWQ (vLLM's `quantization="awq"`): 4-bit weights in groups along the input, with zero points and scales,
in AutoAWQ's GEMM layout; activations stay in the model dtype (weight-only quantization).

The checkpoint, as AutoAWQ writes it and vLLM's AWQConfig reads it:
- config.json `quantization_config` {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": true,
  "version": "gemm", "modules_to_not_convert": [...] | null}, or an older `quant_config.json` /
  `quantize_config.json` beside it with `w_bit`, `q_group_size`, `zero_point`, `version` ("GEMM").
  `bits` 4 only (vLLM too); `group_size` G > 0, or -1 for one group over a layer's whole input (vLLM's
  reading); `zero_point` true (false: "not supported yet"); `version` "gemm", any case (AutoAWQ's GEMV,
  GEMV-fast, Marlin, ... layouts: "not supported yet").
- Each quantized linear layer stores `qweight` int32 [in, out / 8], `qzeros` int32 [in / G, out / 8] and
  `scales` fp16 [in / G, out], packed along the OUTPUT dim in AutoAWQ's order (awq_utils.py), and its bias
  as a float [out]. Layers whose name contains an entry of `modules_to_not_convert` (vLLM's and
  transformers' substring rule, skip.py) are plain float layers; so is lm_head, which AutoAWQ never
  quantizes and no linear method here sees.

Invariants:
- A quantized layer holds qweight / qzeros int32 packed along dim 1 (`packed_dim` 1, `packed_factor` 8,
  `output_dim` 1, `input_dim` 0) and scales [in / G, out] in the model dtype (`output_dim` 1,
  `input_dim` 0). Fused layers (qkv, gate_up) concatenate their pieces along dim 1 at the pieces'
  packed offsets, and tensor-parallel shards split dim 1 (column-parallel) or dim 0 (row-parallel, whole
  groups) with the shared loaders (weight_loading.py); every piece's output size must be a multiple of 8
  and the input on a rank a multiple of G, else a ValueError naming the layer.
- On CPU (and for layers outside the kernels' layout) `apply` computes awq_utils.awq_linear_reference: the
  weight dequantized to the activation dtype, then x @ w + bias. On CUDA, `process_weights_after_loading`
  repacks the layer into the int4 kernels' layout (int4_linear.py; the checkpoint-layout parameters are then
  gone) and `apply` / `apply_silu_and_mul` run the Triton int4 GEMV (few rows; a pending RMSNorm and the
  SiLU·mul fused) or dequantizing GEMM, equal to the reference up to fp32 summation order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.model_executor.layers.linear import LinearMethod, UnquantizedLinearMethod, set_weight_attrs
from pagoda.model_executor.layers.quantization.awq_utils import AWQ_BITS, AWQ_PACK_FACTOR, awq_linear_reference
from pagoda.model_executor.layers.quantization.base_config import QuantizationConfig
from pagoda.model_executor.layers.quantization.int4_linear import (
    has_int4_layout,
    int4_matmul,
    kernels_apply,
    materialize,
    repack_awq,
)

SUPPORTED_VERSIONS = ("gemm",)


def _first_key(config: dict[str, Any], keys: list[str], source: str) -> tuple[str, Any]:
    """(the first of `keys` in `config`, its value); ValueError naming them when none is there."""
    value = QuantizationConfig.get_from_keys(config, keys, source)
    return next(key for key in keys if key in config), value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AwqConfig(QuantizationConfig):
    """AWQ checkpoints in AutoAWQ's GEMM layout: 4-bit, grouped, with zero points."""

    name = "awq"
    skip_rule = "substr"

    def __init__(self, group_size: int, zero_point: bool = True, modules_to_not_convert: list[str] | None = None,
                 weight_bits: int = AWQ_BITS) -> None:
        super().__init__(modules_to_not_convert)
        if weight_bits != AWQ_BITS or not zero_point or not (_is_int(group_size) and (group_size > 0 or group_size == -1)):
            raise ValueError(f"AWQ needs weight_bits=4, zero_point=True and a group size > 0 or -1, got "
                             f"{weight_bits!r}, {zero_point!r}, {group_size!r}")
        self.weight_bits = weight_bits
        self.group_size = group_size
        self.zero_point = zero_point

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "quantization_config") -> "AwqConfig":
        key, bits = _first_key(config, ["bits", "w_bit"], source)
        if bits != AWQ_BITS or not _is_int(bits):
            raise ValueError(f"{source}.{key}={bits!r} is not supported: AWQ weights are 4-bit (supported: 4)")
        key, group_size = _first_key(config, ["group_size", "q_group_size"], source)
        if not _is_int(group_size) or not (group_size > 0 or group_size == -1):
            raise ValueError(f"{source}.{key}={group_size!r} is not a group size: the number of input channels "
                             "sharing a scale and zero point (> 0), or -1 for one group over the whole input")
        zero_point = cls.get_from_keys(config, ["zero_point"], source)
        if not isinstance(zero_point, bool):
            raise ValueError(f"{source}.zero_point={zero_point!r} must be true or false")
        if not zero_point:
            raise ValueError(f"{source}.zero_point=false (symmetric AWQ, no zero points) is not supported yet "
                             "(supported: true)")
        version = cls.get_from_keys_or(config, ["version"], "gemm")
        if not isinstance(version, str) or version.lower() not in SUPPORTED_VERSIONS:
            raise ValueError(f"{source}.version={version!r} is not supported yet (supported: 'gemm', AutoAWQ's GEMM "
                             "layout)")
        skip = cls.check_str_list(config.get("modules_to_not_convert"), f"{source}.modules_to_not_convert")
        return cls(group_size, zero_point, skip)

    def get_linear_method(self, layer: nn.Module, prefix: str):
        if self.is_layer_skipped(prefix):
            return UnquantizedLinearMethod()
        return AwqLinearMethod(self)


class AwqLinearMethod(LinearMethod):
    """qweight / qzeros int32 packed along the output, scales per group of inputs; dequantize, then matmul."""

    def __init__(self, config: AwqConfig) -> None:
        self.config = config

    def _group_size(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int]) -> int:
        """The layer's group size (-1: its whole input, as vLLM); ValueError unless the shapes fit the format."""
        group = self.config.group_size if self.config.group_size != -1 else layer.input_size
        name = layer.prefix or type(layer).__name__
        if input_size_per_partition % group:
            raise ValueError(f"{name}: its input size {input_size_per_partition} (on this rank) is not a multiple of "
                             f"the AWQ group size {group} (a tensor-parallel size too large for this checkpoint?)")
        if any(size % AWQ_PACK_FACTOR for size in output_partition_sizes):
            raise ValueError(f"{name}: output sizes {output_partition_sizes} (on this rank) are not multiples of "
                             f"{AWQ_PACK_FACTOR}, the int4 values AWQ packs per int32")
        return group

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        group = self._group_size(layer, input_size_per_partition, output_partition_sizes)
        rows, cols = input_size_per_partition, sum(output_partition_sizes)
        packed = {"input_dim": 0, "output_dim": 1, "packed_dim": 1, "packed_factor": AWQ_PACK_FACTOR}
        shapes = {"qweight": (rows, cols // AWQ_PACK_FACTOR, torch.int32, packed),
                  "qzeros": (rows // group, cols // AWQ_PACK_FACTOR, torch.int32, packed),
                  "scales": (rows // group, cols, params_dtype, {"input_dim": 0, "output_dim": 1})}
        for name, (dim0, dim1, dtype, attrs) in shapes.items():
            param = nn.Parameter(torch.empty(dim0, dim1, dtype=dtype), requires_grad=False)
            set_weight_attrs(param, attrs)
            layer.register_parameter(name, param)
        layer.awq_group_size = group

    # a PendingRMSNorm reaches `apply`: fused into the int4 GEMV, materialized on the other paths
    takes_pending_norm = True

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if kernels_apply(layer.qweight):
            repack_awq(layer)

    def apply(self, layer, x, bias):
        if has_int4_layout(layer):
            return int4_matmul(layer, x, bias, None)
        return awq_linear_reference(materialize(x), layer.qweight, layer.qzeros, layer.scales, layer.awq_group_size,
                                    bias)

    def apply_silu_and_mul(self, layer, x, bias, act):
        if has_int4_layout(layer):
            return int4_matmul(layer, x, bias, act)
        return act(self.apply(layer, x, bias))
