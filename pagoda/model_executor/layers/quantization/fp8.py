"""FP8 W8A8 (vLLM's `quantization="fp8"`): float8_e4m3fn weights with fp32 scales, activations
quantized to FP8 on the fly.

Two sources, as vLLM:
- An FP8 checkpoint (`quant_method: "fp8"`): each quantized layer stores `weight` float8_e4m3fn
  [out, in], `weight_scale` fp32 per tensor ([] or [1]) or per output channel ([out, 1] or [out]),
  and with `activation_scheme: "static"` an `input_scale` (one value); "dynamic" has none. Layers in
  `ignored_layers` (or `modules_to_not_convert`) are plain and stay unquantized; matched exactly, as
  vLLM's Fp8Config does. `weight_block_size` (block-wise FP8) is not supported yet.
- `quantization="fp8"` on an unquantized checkpoint: weights load in the model dtype, then each
  layer's (fused) weight is quantized with ONE per-tensor scale (amax / 448), as vLLM's
  `scaled_fp8_quant(weight, scale=None)`; activations are dynamic.

Invariants:
- After loading, a quantized layer holds `weight` fp8 [N, K] and `weight_scale` fp32 [N, 1]: one
  scale per output row. A fused layer's pieces keep their own checkpoint scales (the per-tensor scale
  of q_proj is the scale of q's rows, k_proj's of k's rows), so nothing is requantized; vLLM instead
  requantizes the pieces to their largest scale for a per-tensor `torch._scaled_mm`, which rounds
  twice. `input_scale` is fp32 [1] (static: the largest of the fused pieces' scales, as vLLM, since
  the pieces share one input) or None (dynamic: per-token scales, what vLLM uses on CUDA GPUs that
  run CUTLASS FP8).
- `apply` quantizes x [..., K] to FP8 (per token, or with the static scale; on CUDA in one Triton kernel,
  pagoda/kernels/fp8_quant.py, bit for bit the torch math) and computes
  fp8_utils.fp8_linear_reference's product: through `torch._scaled_mm` for bf16 activations on a CUDA
  GPU of compute capability 8.9+ (Ada, Hopper), otherwise in torch (CPU; other dtypes or GPUs), with
  the same result up to fp32 rounding.
- Except on CUDA for at most tuning.FP8_GEMV_USE_MAX_M rows (decode; env PAGODA_FP8_GEMV_MAX_M, default 0 = off until measured on a GPU):
  there the FP8 GEMV (pagoda/kernels/fp8_gemv.py) quantizes x inside the product, bit for bit as above, and
  fuses a pending RMSNorm (+ residual) in front (unless PAGODA_FP8_GEMV_NORM=0) and the SiLU·mul of a
  [gate | up] layer behind; elsewhere a pending norm is materialized first and the activation applied after.
  The choice depends on shapes only (CUDA-graph and eager runs of a batch compute alike).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pagoda.kernels import tuning
from pagoda.model_executor.layers.linear import LinearMethod, UnquantizedLinearMethod, set_weight_attrs
from pagoda.model_executor.layers.pending_norm import PendingRMSNorm
from pagoda.model_executor.layers.quantization.base_config import QuantizationConfig
from pagoda.model_executor.layers.quantization.fp8_utils import (
    FP8_DTYPE,
    MIN_SCALE,
    fp8_linear_reference,
    fp8_linear_scaled_mm,
    per_tensor_scale,
    quantize,
    quantize_activation,
    scaled_mm_supported,
)

logger = logging.getLogger(__name__)

ACTIVATION_SCHEMES = ("dynamic", "static")
_warned: set[str] = set()


class Fp8Config(QuantizationConfig):
    """FP8 W8A8: from an FP8 checkpoint, or quantizing an unquantized one at load time."""

    name = "fp8"
    supports_online = True
    skip_rule = "exact"

    def __init__(self, is_checkpoint_fp8_serialized: bool = False, activation_scheme: str = "dynamic",
                 ignored_layers: list[str] | None = None) -> None:
        super().__init__(ignored_layers)
        if activation_scheme not in ACTIVATION_SCHEMES:
            raise ValueError(f"activation_scheme must be one of {list(ACTIVATION_SCHEMES)}, got {activation_scheme!r}")
        if activation_scheme == "static" and not is_checkpoint_fp8_serialized:
            raise ValueError("activation_scheme 'static' needs an FP8 checkpoint with input scales")
        self.is_checkpoint_fp8_serialized = is_checkpoint_fp8_serialized
        self.activation_scheme = activation_scheme

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "quantization_config") -> "Fp8Config":
        scheme = cls.get_from_keys(config, ["activation_scheme"], source)
        if scheme not in ACTIVATION_SCHEMES:
            raise ValueError(f"{source}.activation_scheme={scheme!r} is not one of {list(ACTIVATION_SCHEMES)}")
        block = config.get("weight_block_size")
        if block is not None:
            raise ValueError(f"{source}.weight_block_size={block!r}: block-wise FP8 is not supported yet (supported: "
                             "per-tensor and per-channel weight scales, weight_block_size null)")
        fmt = config.get("fmt")
        if fmt not in (None, "e4m3", "float8_e4m3fn"):
            raise ValueError(f"{source}.fmt={fmt!r} is not supported yet (supported: 'e4m3', i.e. float8_e4m3fn)")
        ignored = cls.check_str_list(config.get("ignored_layers"), f"{source}.ignored_layers")
        if not ignored:
            ignored = cls.check_str_list(config.get("modules_to_not_convert"), f"{source}.modules_to_not_convert")
        return cls(is_checkpoint_fp8_serialized=True, activation_scheme=scheme, ignored_layers=ignored)

    @classmethod
    def online(cls) -> "Fp8Config":
        return cls(is_checkpoint_fp8_serialized=False, activation_scheme="dynamic")

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod:
        if self.is_layer_skipped(prefix):
            return UnquantizedLinearMethod()
        return Fp8LinearMethod(self)


class Fp8LinearMethod(LinearMethod):
    """FP8 weight [N, K] with per-row fp32 scales; activations quantized per call."""

    def __init__(self, config: Fp8Config) -> None:
        self.config = config

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, params_dtype):
        rows = sum(output_partition_sizes)
        serialized = self.config.is_checkpoint_fp8_serialized
        weight = nn.Parameter(torch.empty(rows, input_size_per_partition, dtype=FP8_DTYPE if serialized else params_dtype),
                              requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0})
        layer.register_parameter("weight", weight)
        layer.register_parameter("weight_scale", None)
        layer.register_parameter("input_scale", None)
        if not serialized:
            return  # quantized in process_weights_after_loading
        weight_scale = nn.Parameter(torch.empty(rows, 1, dtype=torch.float32), requires_grad=False)
        set_weight_attrs(weight_scale, {"output_dim": 0, "broadcast_scalar": True})
        layer.weight_scale = weight_scale
        if self.config.activation_scheme == "static":
            input_scale = nn.Parameter(torch.empty(len(output_partition_sizes), dtype=torch.float32), requires_grad=False)
            set_weight_attrs(input_scale, {"per_piece": True})
            layer.input_scale = input_scale

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        rows = layer.weight.shape[0]
        if not self.config.is_checkpoint_fp8_serialized:
            weight = layer.weight.data
            scale = per_tensor_scale(weight)
            layer.weight = nn.Parameter(quantize(weight, scale), requires_grad=False)
            layer.weight_scale = nn.Parameter(scale.reshape(1, 1).expand(rows, 1).contiguous(), requires_grad=False)
        else:
            _check_scale(layer.weight_scale.data, f"{layer.prefix}.weight_scale")
            if layer.input_scale is not None:
                _check_scale(layer.input_scale.data, f"{layer.prefix}.input_scale")
                layer.input_scale = nn.Parameter(layer.input_scale.data.max().reshape(1), requires_grad=False)
        layer.fp8_scaled_mm = scaled_mm_supported(layer.weight) and layer.params_dtype == torch.bfloat16
        if layer.weight.is_cuda and not layer.fp8_scaled_mm and "emulated" not in _warned:
            _warned.add("emulated")
            logger.warning("FP8 layers run as dequantized fp32 matmuls here (slow): torch._scaled_mm needs a GPU of "
                           "compute capability 8.9+, dtype=bfloat16 and sizes that are multiples of 16 (e.g. %s: %s)",
                           layer.prefix, tuple(layer.weight.shape))

    # a PendingRMSNorm reaches `apply`: fused into the FP8 GEMV, materialized on the other paths
    takes_pending_norm = True

    def apply(self, layer, x, bias):
        return self._matmul(layer, x, bias, None)

    def apply_silu_and_mul(self, layer, x, bias, act):
        return self._matmul(layer, x, bias, act)

    @staticmethod
    def _matmul(layer, x, bias, act):
        """act(x @ Wᵀ + bias) (act None: none; else SiluAndMul of a [gate | up] weight), x a tensor or a
        PendingRMSNorm: the FP8 GEMV where tuning.fp8_gemv_applies, else quantize + scaled_mm / torch."""
        if not hasattr(layer, "fp8_scaled_mm"):
            raise RuntimeError(f"{layer.prefix or type(layer).__name__}: FP8 weights are used before "
                               "process_weights_after_loading (the loader calls it after loading)")
        rows = x.x if isinstance(x, PendingRMSNorm) else x
        if tuning.fp8_gemv_applies(rows.reshape(-1, rows.shape[-1])) and layer.weight.is_contiguous():
            return fp8_gemv_matmul(layer, x, bias, act)
        if isinstance(x, PendingRMSNorm):
            x = x.materialize()
        shape = x.shape
        q_x, x_scale = _quantize_activation(x.reshape(-1, shape[-1]), layer.input_scale)
        matmul = fp8_linear_scaled_mm if layer.fp8_scaled_mm and x.dtype == torch.bfloat16 else fp8_linear_reference
        out = matmul(q_x, x_scale, layer.weight, layer.weight_scale, bias, x.dtype)
        out = out.reshape(*shape[:-1], out.shape[-1])
        return out if act is None else act(out)


def fp8_gemv_matmul(layer: nn.Module, x, bias: torch.Tensor | None, act: nn.Module | None) -> torch.Tensor:
    """The FP8 GEMV path of `Fp8LinearMethod` (the caller checked tuning.fp8_gemv_applies; tests call it on CPU
    through Triton's interpreter): x [..., K] or a PendingRMSNorm, fused into the kernel unless
    tuning.FP8_GEMV_FUSE_NORM is off; act None or SiluAndMul (fused). Imported on first use: CPU never needs Triton."""
    from pagoda.kernels.fp8_gemv import fp8_gemv

    norm = {}
    if isinstance(x, PendingRMSNorm):
        if tuning.FP8_GEMV_FUSE_NORM:
            norm, x = x.gemv_args(), x.x
        else:
            x = x.materialize()
    lead = x.shape[:-1]
    out = fp8_gemv(x.reshape(-1, x.shape[-1]), layer.weight, layer.weight_scale, layer.input_scale, bias,
                   silu_and_mul=act is not None, min_scale=MIN_SCALE, **norm)
    return out.reshape(*lead, out.shape[-1])


def _quantize_activation(x: torch.Tensor, static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8_utils.quantize_activation, through the Triton kernel on CUDA (one read of x instead of five passes;
    bit for bit the same, tests/kernels/test_fp8_quant.py); imported on first use so CPU never needs Triton."""
    if x.is_cuda:
        from pagoda.kernels.fp8_quant import fp8_quantize

        return fp8_quantize(x, static_scale, MIN_SCALE)
    return quantize_activation(x, static_scale)


def _check_scale(scale: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError(f"checkpoint tensor {name!r}: FP8 scales must be finite and >= 0, got {scale.flatten()[:8].tolist()}")
