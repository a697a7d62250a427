"""GPTQ (vLLM's `quantization="gptq"`): 4- or 8-bit weights in groups along the input, with zero points and
scales, in AutoGPTQ's layout; activations stay in the model dtype (weight-only quantization).

The checkpoint, as AutoGPTQ / GPTQModel write it and vLLM's GPTQConfig reads it:
- config.json `quantization_config` {"quant_method": "gptq", "bits": 4 | 8, "group_size": G | -1,
  "desc_act": bool, "sym": bool, "checkpoint_format": "gptq" | "gptq_v2", ...}, or a `quantize_config.json`
  beside it with the same keys. `bits` 2 and 3 (vLLM has them) are "not supported yet"; `group_size` -1
  is one group over a layer's whole input; `sym` changes nothing here (symmetric checkpoints store
  zeros too, 2^(bits-1) - 1 in v1); `checkpoint_format` "gptq" (the default: v1, stored zero = zero - 1)
  or "gptq_v2" (the real zero); `lm_head: true` and a non-empty `dynamic` are "not supported yet".
- Each quantized linear layer stores `qweight` int32 [in / pack, out] packed along the INPUT,
  `qzeros` int32 [groups, out / pack] packed along the OUTPUT, `scales` fp16 [groups, out] and `g_idx`
  int32 [in] (the group of each input row), packing per gptq_utils.py. With `desc_act` the rows' groups
  come from `g_idx` (any order); without it g_idx is i // G and is ignored (vLLM too), so it may be absent.
  Layers whose name contains an entry of `modules_to_not_convert` (transformers' substring rule, skip.py)
  are plain float layers; so is lm_head.

Invariants:
- A quantized layer holds qweight (`packed_dim` 0, `input_dim` 0, `output_dim` 1), qzeros (`packed_dim` 1,
  `output_dim` 1) and scales (`output_dim` 1) in the model dtype; with `desc_act` also g_idx (`input_dim` 0,
  one copy per fused piece, which AutoGPTQ makes equal: the pieces share their input and its Hessian).
  Fused layers concatenate pieces along dim 1 at their (packed) offsets with the shared loaders
  (weight_loading.py). Row-parallel shards split qweight rows in logical input rows; scales / qzeros
  are split in whole groups (`input_dim` 0) only without desc_act and with G > 0, and are held whole
  otherwise (vLLM's rule), indexed by the checkpoint's g_idx. Every piece's output size must be a
  multiple of pack and the input on a rank a multiple of pack and of G, else a ValueError naming the layer.
- On CPU, for 8-bit weights and for layers outside the kernels' layout, `apply` computes
  gptq_utils.gptq_linear_reference: dequantize to the activation dtype, then x @ w + bias. On CUDA, 4-bit
  layers are repacked by `process_weights_after_loading` into the int4 kernels' layout (int4_linear.py; with
  desc_act the rows sorted by g_idx, x gathered per call; the checkpoint-layout parameters are then gone) and
  `apply` / `apply_silu_and_mul` run the Triton int4 GEMV (few rows; a pending RMSNorm and the SiLU·mul
  fused) or dequantizing GEMM, equal to the reference up to fp32 summation order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.model_executor.layers.linear import LinearMethod, UnquantizedLinearMethod, set_weight_attrs
from pagoda.model_executor.layers.quantization.base_config import QuantizationConfig
from pagoda.model_executor.layers.quantization.gptq_utils import GPTQ_BITS, gptq_linear_reference, pack_factor
from pagoda.model_executor.layers.quantization.int4_linear import (
    has_int4_layout,
    int4_matmul,
    kernels_apply,
    materialize,
    repack_gptq,
)

CHECKPOINT_FORMATS = {"gptq": 1, "gptq_v2": 0}  # the offset added to a stored zero


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bool(config: dict[str, Any], key: str, default: bool, source: str) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{source}.{key}={value!r} must be true or false")
    return value


class GptqConfig(QuantizationConfig):
    """GPTQ checkpoints in AutoGPTQ's layout: 4- or 8-bit, grouped (or -1), optional act order, v1 or v2 zeros."""

    name = "gptq"
    skip_rule = "substr"

    def __init__(self, weight_bits: int, group_size: int, desc_act: bool = False, sym: bool = True,
                 checkpoint_format: str = "gptq", modules_to_not_convert: list[str] | None = None) -> None:
        super().__init__(modules_to_not_convert)
        if weight_bits not in GPTQ_BITS or not (_is_int(group_size) and (group_size > 0 or group_size == -1)) \
                or checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"GPTQ needs weight_bits in {list(GPTQ_BITS)}, a group size > 0 or -1 and a checkpoint "
                             f"format in {list(CHECKPOINT_FORMATS)}, got {weight_bits!r}, {group_size!r}, "
                             f"{checkpoint_format!r}")
        self.weight_bits = weight_bits
        self.group_size = group_size
        self.desc_act = desc_act
        self.sym = sym
        self.checkpoint_format = checkpoint_format
        self.zero_offset = CHECKPOINT_FORMATS[checkpoint_format]
        self.pack_factor = pack_factor(weight_bits)

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "quantization_config") -> "GptqConfig":
        bits = cls.get_from_keys(config, ["bits"], source)
        if bits in (2, 3):
            raise ValueError(f"{source}.bits={bits!r} is not supported yet (supported: {list(GPTQ_BITS)})")
        if bits not in GPTQ_BITS or not _is_int(bits):
            raise ValueError(f"{source}.bits={bits!r} is not supported: GPTQ weights are 2-, 3-, 4- or 8-bit "
                             f"(supported here: {list(GPTQ_BITS)})")
        group_size = cls.get_from_keys(config, ["group_size"], source)
        if not _is_int(group_size) or not (group_size > 0 or group_size == -1):
            raise ValueError(f"{source}.group_size={group_size!r} is not a group size: the number of input channels "
                             "sharing a scale and zero point (> 0), or -1 for one group over the whole input")
        desc_act = _check_bool(config, "desc_act", False, source)
        sym = _check_bool(config, "sym", True, source)
        fmt = config.get("checkpoint_format") or "gptq"
        if fmt not in CHECKPOINT_FORMATS:
            raise ValueError(f"{source}.checkpoint_format={fmt!r} is not supported yet (supported: "
                             f"{list(CHECKPOINT_FORMATS)})")
        if _check_bool(config, "lm_head", False, source):
            raise ValueError(f"{source}.lm_head=true (a quantized lm_head) is not supported yet (supported: false)")
        if config.get("dynamic"):
            raise ValueError(f"{source}.dynamic (per-module overrides of bits / group size) is not supported yet "
                             "(supported: absent or empty)")
        skip = cls.check_str_list(config.get("modules_to_not_convert"), f"{source}.modules_to_not_convert")
        return cls(bits, group_size, desc_act, sym, fmt, skip)

    def get_linear_method(self, layer: nn.Module, prefix: str):
        if self.is_layer_skipped(prefix):
            return UnquantizedLinearMethod()
        return GptqLinearMethod(self)


class GptqLinearMethod(LinearMethod):
    """qweight packed along the input, qzeros along the output, scales per group (g_idx with desc_act)."""

    def __init__(self, config: GptqConfig) -> None:
        self.config = config

    def _check_shapes(self, layer: nn.Module, rows: int, output_partition_sizes: list[int], group: int,
                      split_groups: bool) -> None:
        name = layer.prefix or type(layer).__name__
        pack = self.config.pack_factor
        if rows % pack:
            raise ValueError(f"{name}: its input size {rows} (on this rank) is not a multiple of {pack}, the "
                             f"{self.config.weight_bits}-bit values GPTQ packs per int32 along the input")
        if layer.input_size % group or (split_groups and rows % group):
            raise ValueError(f"{name}: its input size {rows} (on this rank; {layer.input_size} in all) is not a "
                             f"multiple of the GPTQ group size {group} (a tensor-parallel size too large for this "
                             "checkpoint?)")
        if any(size % pack for size in output_partition_sizes):
            raise ValueError(f"{name}: output sizes {output_partition_sizes} (on this rank) are not multiples of "
                             f"{pack}, the {self.config.weight_bits}-bit values GPTQ packs per int32")

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        config = self.config
        group = config.group_size if config.group_size != -1 else layer.input_size
        rows, cols, pack = input_size_per_partition, sum(output_partition_sizes), config.pack_factor
        sharded = rows != layer.input_size
        split_groups = sharded and config.group_size != -1 and not config.desc_act
        self._check_shapes(layer, rows, output_partition_sizes, group, split_groups)
        groups = (rows if split_groups else layer.input_size) // group
        per_group = {"output_dim": 1, **({"input_dim": 0} if split_groups or not sharded else {})}
        shapes = {"qweight": ((rows // pack, cols), torch.int32,
                              {"input_dim": 0, "output_dim": 1, "packed_dim": 0, "packed_factor": pack}),
                  "qzeros": ((groups, cols // pack), torch.int32, {**per_group, "packed_dim": 1, "packed_factor": pack}),
                  "scales": ((groups, cols), params_dtype, per_group)}
        if config.desc_act:
            shapes["g_idx"] = ((rows,), torch.int32, {"input_dim": 0})
        for name, (shape, dtype, attrs) in shapes.items():
            param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(param, attrs)
            layer.register_parameter(name, param)

    # a PendingRMSNorm reaches `apply`: fused into the int4 GEMV, materialized on the other paths
    takes_pending_norm = True

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        g_idx = getattr(layer, "g_idx", None)
        if g_idx is not None and g_idx.numel():
            groups = layer.scales.shape[0]
            low, high = int(g_idx.min()), int(g_idx.max())  # once, at load time
            if low < 0 or high >= groups:
                raise ValueError(f"checkpoint tensor {layer.prefix}.g_idx: group indices {low} .. {high} are "
                                 f"outside 0 .. {groups - 1} (the layer's scales have {groups} groups)")
        if kernels_apply(layer.qweight):
            repack_gptq(layer, self.config.weight_bits, self.config.zero_offset)

    def apply(self, layer, x, bias):
        if has_int4_layout(layer):
            return int4_matmul(layer, x, bias, None)
        config = self.config
        return gptq_linear_reference(materialize(x), layer.qweight, layer.qzeros, layer.scales,
                                     getattr(layer, "g_idx", None), config.weight_bits, config.zero_offset, bias)

    def apply_silu_and_mul(self, layer, x, bias, act):
        if has_int4_layout(layer):
            return int4_matmul(layer, x, bias, act)
        return act(self.apply(layer, x, bias))
