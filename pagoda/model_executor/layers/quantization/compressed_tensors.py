"""compressed-tensors (vLLM's `quantization="compressed-tensors"`): checkpoints llm-compressor writes, with
per-layer schemes chosen by `config_groups` targets and an `ignore` list.

The checkpoint's config.json `quantization_config` (compressed_tensors_args.py reads the groups' QuantizationArgs):
{"quant_method": "compressed-tensors", "format": FORMAT, "config_groups": {NAME: {"targets": [...], "weights":
ARGS, "input_activations": ARGS | null, "format": FORMAT (optional)}}, "ignore": [...], "kv_cache_scheme": null,
"sparsity_config": {} | null, "quantization_status": "compressed" (only), ...}. FORMAT is "pack-quantized",
"float-quantized", "int-quantized" or "naive-quantized" (a group's own `format` wins over the global one; the global
one may then be "mixed-precision"); other formats, sparsity, transforms and a KV-cache scheme are "not supported yet".

Which scheme a linear layer gets (vLLM's rules, in Pagoda's words):
- `ignore` entries (checkpoint module names, or "re:REGEX" matched from the start of the name) leave a layer
  unquantized; a fused layer (qkv_proj, gate_up_proj) is ignored when its own name is listed or all its checkpoint
  pieces are, and naming only some pieces is a ValueError (skip.py's "ignore" rule).
- Otherwise each checkpoint piece takes the first config group with a target equal to its name or a "re:" target
  matching it; failing that, the first group targeting the class "Linear" (every linear layer of the checkpoint is a
  torch.nn.Linear). Other class names match no linear layer. A layer (piece) no group targets stays unquantized.
  All pieces of a fused layer must get equal schemes (or all none), else a ValueError naming the pieces.
- lm_head is not a linear layer here: its `ignore: ["lm_head"]` (what llm-compressor writes) is a no-op.

Invariants:
- `from_config` checks every group before any model is built (errors name `source.config_groups.NAME...`);
  `get_linear_method` only matches names.
- The methods: "wna16" (pack-quantized int4 / int8 weights; compressed_tensors_wna16.py), "fp8" (fp8.py's
  Fp8LinearMethod: the same tensors `weight` / `weight_scale` / `input_scale` as vLLM's "fp8" checkpoints) and
  "int8" (compressed_tensors_int8.py).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from pagoda.model_executor.layers.linear import LinearMethod, UnquantizedLinearMethod
from pagoda.model_executor.layers.quantization.base_config import QuantizationConfig
from pagoda.model_executor.layers.quantization.compressed_tensors_args import (
    FORMATS,
    KNOWN_FORMATS,
    Scheme,
    choose_scheme,
    parse_args,
)
from pagoda.model_executor.layers.quantization.skip import piece_prefixes

LINEAR_CLASS_TARGETS = ("Linear",)  # class-name targets that name a linear layer


def _matches(name: str, target: str) -> bool:
    return re.match(target[3:], name) is not None if target.startswith("re:") else target == name


def _check_regexes(entries: list[str], field: str) -> list[str]:
    """`entries`, or ValueError naming the field of a "re:" entry that is not a valid regular expression."""
    for entry in entries:
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as exc:
                raise ValueError(f"{field} entry {entry!r} is not a valid regular expression: {exc}") from None
    return entries


class CompressedTensorsConfig(QuantizationConfig):
    """compressed-tensors checkpoints: per-layer schemes from config groups' targets, an `ignore` list."""

    name = "compressed-tensors"
    skip_rule = "ignore"

    def __init__(self, groups: list[tuple[str, list[str], Scheme]], ignore: list[str] | None = None) -> None:
        super().__init__(ignore)
        self.groups = groups  # (group name, targets, scheme), in the config's order

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "quantization_config") -> "CompressedTensorsConfig":
        _refuse_extras(config, source)
        global_format = config.get("format")
        if global_format is not None and global_format not in KNOWN_FORMATS:
            raise ValueError(f"{source}.format={global_format!r} is not a compressed-tensors format; supported: "
                             f"{list(FORMATS)}")
        groups_config = cls.get_from_keys(config, ["config_groups"], source)
        if not isinstance(groups_config, dict) or not groups_config:
            raise ValueError(f"{source}.config_groups must be a non-empty JSON object (group name -> "
                             f"{{targets, weights, input_activations}}), got {groups_config!r}")
        groups = [cls._read_group(name, group, global_format, f"{source}.config_groups.{name}")
                  for name, group in groups_config.items()]
        ignore = _check_regexes(cls.check_str_list(config.get("ignore"), f"{source}.ignore"), f"{source}.ignore")
        return cls(groups, ignore)

    @staticmethod
    def _read_group(name: str, group: Any, global_format: str | None, where: str) -> tuple[str, list[str], Scheme]:
        if not isinstance(group, dict):
            raise ValueError(f"{where} must be a JSON object with targets, weights and input_activations, got "
                             f"{group!r}")
        targets = group.get("targets")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"{where}.targets must be a non-empty list of module names, 're:' regexes or class "
                             f"names (e.g. ['Linear']), got {targets!r}")
        fmt = group.get("format") or global_format
        if fmt is None:
            raise ValueError(f"{where}.format (or the global format) is required; supported: {list(FORMATS)}")
        if fmt not in FORMATS:
            label = "is not a compressed-tensors format" if fmt not in KNOWN_FORMATS else "is not supported yet"
            raise ValueError(f"{where}.format={fmt!r} {label} (supported: {list(FORMATS)})")
        if group.get("output_activations") is not None:
            raise ValueError(f"{where}.output_activations (quantized outputs) is not supported yet (supported: null)")
        weights = parse_args(group.get("weights"), f"{where}.weights")
        inputs = parse_args(group.get("input_activations"), f"{where}.input_activations")
        return name, _check_regexes(list(targets), f"{where}.targets"), choose_scheme(fmt, weights, inputs, where)

    def map_checkpoint_names(self, to_module_name) -> None:
        super().map_checkpoint_names(to_module_name)
        self.groups = [(name, [to_module_name(t) if "." in t and not t.startswith("re:") else t for t in targets],
                        scheme) for name, targets, scheme in self.groups]

    def scheme_of(self, prefix: str) -> Scheme | None:
        """The scheme of the linear layer `prefix` (None: unquantized); ValueError for fused pieces that disagree."""
        if any(_matches(prefix, entry) for entry in self.skip_list) or self.is_layer_skipped(prefix):
            return None  # the fused layer's own name listed (vLLM reads that too), or all its pieces
        pieces = piece_prefixes(prefix, self.packed_modules_mapping)
        found = [self._group_of(piece) for piece in pieces]
        schemes = {None if g is None else g[2] for g in found}
        if len(schemes) > 1:
            named = {piece: g[0] if g else None for piece, g in zip(pieces, found)}
            raise ValueError(f"the compressed-tensors config gives the pieces of the fused layer {prefix} different "
                             f"schemes (piece -> config group: {named}); all pieces of a fused layer must be quantized "
                             "the same way")
        return found[0][2] if found[0] else None

    def _group_of(self, name: str) -> tuple[str, list[str], Scheme] | None:
        for group in self.groups:
            if any(_matches(name, t) for t in group[1]):
                return group
        return next((g for g in self.groups if any(t in LINEAR_CLASS_TARGETS for t in g[1])), None)

    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod:
        scheme = self.scheme_of(prefix)
        if scheme is None:
            return UnquantizedLinearMethod()
        if scheme.kind == "wna16":
            from pagoda.model_executor.layers.quantization.compressed_tensors_wna16 import WNA16LinearMethod

            return WNA16LinearMethod(scheme.weights)
        if scheme.kind == "fp8":
            from pagoda.model_executor.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod

            static = "dynamic" if scheme.input.dynamic else "static"
            return Fp8LinearMethod(Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme=static))
        from pagoda.model_executor.layers.quantization.compressed_tensors_int8 import Int8W8A8LinearMethod

        return Int8W8A8LinearMethod(static_input=not scheme.input.dynamic)


def _refuse_extras(config: dict[str, Any], source: str) -> None:
    """ValueError for the parts of a compressed-tensors config Pagoda does not run yet."""
    status = config.get("quantization_status")
    if status not in (None, "compressed"):
        raise ValueError(f"{source}.quantization_status={status!r} (weights saved uncompressed, as floats) is not "
                         "supported yet (supported: 'compressed')")
    if config.get("kv_cache_scheme") is not None:
        raise ValueError(f"{source}.kv_cache_scheme (a quantized KV cache) is not supported yet (supported: null)")
    if config.get("sparsity_config"):
        raise ValueError(f"{source}.sparsity_config (sparse weights) is not supported yet (supported: null or {{}})")
    if config.get("transform_config"):
        raise ValueError(f"{source}.transform_config (rotations) is not supported yet (supported: null or absent)")
