"""compressed-tensors' QuantizationArgs and scheme choice, read from a checkpoint's `quantization_config` (plain data,
no torch).

The format (llm-compressor writes it, vLLM's `quantization="compressed-tensors"` reads it): `config_groups` maps a
group name to {"targets": [...], "weights": ARGS | null, "input_activations": ARGS | null, "output_activations":
null, "format": FORMAT (optional: the global `format` otherwise)}. ARGS are QuantizationArgs:
{"num_bits": int, "type": "int" | "float", "symmetric": bool, "strategy": "tensor" | "channel" | "group" | "block"
| "token" | "tensor_group" | "attn_head" | null, "group_size": int | null, "dynamic": bool | "local",
"actorder": null | bool | "group" | "weight" | "static", ...}; a null strategy is inferred as compressed-tensors does
(a group size > 0: "group", -1: "channel", none: "tensor"). Keys this reader does not use (observer, scale_dtype,
...) are ignored.

Invariants:
- `parse_args` returns a frozen QuantArgs or raises ValueError naming the field as `source.key` and its allowed
  values; nothing is checked against what Pagoda runs there.
- `choose_scheme` maps (format, weights, input_activations) to a frozen Scheme with `kind` in SCHEME_KINDS, or raises
  ValueError "... is not supported yet" naming the scheme (e.g. "W4A8", "W8A16 FP8") and listing the supported
  ones. Two layers with equal Schemes store the same tensors, so a fused layer's pieces may differ in group but not
  in Scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TYPES = ("int", "float")
STRATEGIES = ("tensor", "channel", "group", "block", "token", "tensor_group", "attn_head")
ACTORDERS = (None, "group", "weight", "static")
FORMATS = ("pack-quantized", "float-quantized", "naive-quantized", "int-quantized")
KNOWN_FORMATS = FORMATS + ("dense", "sparse-bitmask", "sparse-24-bitmask", "marlin-24", "nvfp4-pack-quantized",
                           "mxfp4-pack-quantized", "mixed-precision")
SCHEME_KINDS = ("wna16", "fp8", "int8")
SUPPORTED_SCHEMES = ("W4A16 / W8A16 int weights per group or channel, symmetric or not (pack-quantized)",
                     "W8A8 FP8: fp8 weights per tensor or channel, activations dynamic per token or static per tensor "
                     "(float-quantized)",
                     "W8A8 int8: symmetric int8 weights per tensor or channel, symmetric activations dynamic per token "
                     "or static per tensor (int-quantized, naive-quantized)")


@dataclass(frozen=True)
class QuantArgs:
    """One QuantizationArgs: how a tensor (weights or input activations) is quantized."""

    num_bits: int
    type: str
    symmetric: bool
    strategy: str
    group_size: int | None
    dynamic: bool | str  # "local": NVFP4's dynamic local scales
    actorder: str | None


@dataclass(frozen=True)
class Scheme:
    """What a quantized linear layer stores and computes: `kind` in SCHEME_KINDS, the weights' and (W8A8) the input
    activations' args; `input` None means activations stay in the model dtype."""

    kind: str
    weights: QuantArgs
    input: QuantArgs | None
    format: str

    @property
    def name(self) -> str:
        w = self.weights
        return f"W{w.num_bits}A{self.input.num_bits if self.input else 16}{' FP8' if w.type == 'float' else ''}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_args(config: Any, source: str) -> QuantArgs | None:
    """The QuantArgs of a config group's `weights` / `input_activations` dict (None stays None)."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"{source} must be a JSON object (QuantizationArgs) or null, got {config!r}")
    num_bits = config.get("num_bits", 8)
    if not _is_int(num_bits) or not 1 <= num_bits <= 32:
        raise ValueError(f"{source}.num_bits={num_bits!r} is not a bit width (an integer 1 .. 32)")
    qtype = config.get("type", "int")
    if qtype not in TYPES:
        raise ValueError(f"{source}.type={qtype!r} is not one of {list(TYPES)}")
    symmetric = config.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise ValueError(f"{source}.symmetric={symmetric!r} must be true or false")
    group_size = config.get("group_size")
    if group_size is not None and (not _is_int(group_size) or not (group_size > 0 or group_size == -1)):
        raise ValueError(f"{source}.group_size={group_size!r} is not a group size: input channels sharing a scale "
                         "(> 0), -1 (one group per output channel) or null")
    strategy = config.get("strategy")
    if strategy is None:
        strategy = "tensor" if group_size is None else ("channel" if group_size == -1 else "group")
    if strategy not in STRATEGIES:
        raise ValueError(f"{source}.strategy={strategy!r} is not one of {list(STRATEGIES)} (or null)")
    if strategy == "group" and (group_size is None or group_size <= 0):
        raise ValueError(f"{source}.group_size={group_size!r}: strategy 'group' needs a group size > 0")
    dynamic = config.get("dynamic", False)
    if dynamic not in (True, False, "local"):
        raise ValueError(f"{source}.dynamic={dynamic!r} is not one of [true, false, 'local']")
    actorder = config.get("actorder")
    actorder = {True: "group", False: None}.get(actorder, actorder) if isinstance(actorder, bool) else actorder
    if actorder not in ACTORDERS:
        raise ValueError(f"{source}.actorder={actorder!r} is not one of {list(ACTORDERS)} (or true / false)")
    if config.get("block_structure") is not None and strategy != "block":
        raise ValueError(f"{source}.block_structure={config['block_structure']!r} is only meaningful with strategy "
                         f"'block', got strategy {strategy!r}")
    return QuantArgs(num_bits, qtype, symmetric, strategy, group_size if strategy == "group" else None,
                     dynamic, actorder)


def _not_yet(source: str, scheme: str, detail: str) -> ValueError:
    return ValueError(f"{source}: {scheme} ({detail}) is not supported yet (supported: {'; '.join(SUPPORTED_SCHEMES)})")


def choose_scheme(fmt: str, weights: QuantArgs | None, inputs: QuantArgs | None, source: str) -> Scheme:
    """The Scheme of a config group (`source` names it), or ValueError: "not supported yet" naming the scheme."""
    if weights is None:
        raise _not_yet(source, "activation-only quantization", "weights null")
    label = f"W{weights.num_bits}A{inputs.num_bits if inputs else 16}"
    if weights.dynamic:
        raise _not_yet(source, label, "dynamic weights (weights.dynamic true)")
    if weights.strategy == "block":
        raise _not_yet(source, f"block-wise {label}", "weights.strategy 'block'")
    if fmt == "pack-quantized":
        if weights.type != "int" or weights.num_bits not in (4, 8):
            raise _not_yet(source, f"{label} {weights.type}", f"pack-quantized {weights.num_bits}-bit "
                           f"{weights.type} weights; packing holds int4 or int8")
        if inputs is not None:
            raise _not_yet(source, label, "pack-quantized weights with input_activations quantized")
        if weights.strategy not in ("group", "channel"):
            raise _not_yet(source, f"{label} per {weights.strategy}", "pack-quantized weights need strategy 'group' "
                           "or 'channel'")
        if weights.actorder == "group":
            raise _not_yet(source, f"{label} with activation order", "weights.actorder 'group': a weight_g_idx "
                           "permutation of the groups")
        return Scheme("wna16", weights, None, fmt)
    if weights.type == "float":
        if weights.num_bits != 8 or not weights.symmetric or weights.strategy not in ("tensor", "channel"):
            raise _not_yet(source, f"{label} float", f"{weights.num_bits}-bit float weights, symmetric="
                           f"{weights.symmetric}, strategy {weights.strategy!r}")
        if inputs is None:
            raise _not_yet(source, "W8A16 FP8", "fp8 weights with activations in the model dtype")
        _check_inputs(inputs, "float", label + " FP8", source)
        return Scheme("fp8", weights, inputs, fmt)
    if fmt == "float-quantized":
        raise _not_yet(source, f"{label} int", "float-quantized format with int weights")
    if weights.num_bits != 8 or not weights.symmetric or weights.strategy not in ("tensor", "channel"):
        raise _not_yet(source, f"{label} int", f"{weights.num_bits}-bit int weights under {fmt}, symmetric="
                       f"{weights.symmetric}, strategy {weights.strategy!r}")
    if inputs is None:
        raise _not_yet(source, "W8A16 int8", f"{fmt} int8 weights with activations in the model dtype")
    _check_inputs(inputs, "int", label + " int8", source)
    return Scheme("int8", weights, inputs, fmt)


def _check_inputs(inputs: QuantArgs, qtype: str, label: str, source: str) -> None:
    """ValueError unless the input activations are 8-bit `qtype`, symmetric, dynamic per token or static per tensor."""
    if inputs.type != qtype or inputs.num_bits != 8:
        raise _not_yet(source, label, f"input_activations {inputs.num_bits}-bit {inputs.type} with {qtype} weights")
    if inputs.dynamic == "local":
        raise _not_yet(source, label, "input_activations.dynamic 'local'")
    if not inputs.symmetric:
        raise _not_yet(source, label, "asymmetric input activations (an input_zero_point)")
    if inputs.dynamic and inputs.strategy != "token":
        raise _not_yet(source, label, f"dynamic input activations per {inputs.strategy} (supported: per token)")
    if not inputs.dynamic and inputs.strategy != "tensor":
        raise _not_yet(source, label, f"static input activations per {inputs.strategy} (supported: per tensor)")
