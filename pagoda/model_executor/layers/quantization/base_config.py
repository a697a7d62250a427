"""QuantizationConfig: one quantization format's settings, and the linear method it gives each layer.

Invariants:
- A config is built once per model, before the model: from the checkpoint's quantization config
  (`from_config(dict, source)`) or, for quantizing an unquantized checkpoint at load time, with
  `online()` (only where `supports_online`). Bad or unsupported settings are ValueError/TypeError
  naming the field as `source.key` (e.g. "config.json quantization_config.activation_scheme") and the
  allowed values.
- `get_linear_method(layer, prefix)` is called by every linear layer before it creates weights; a
  layer its skip list names (skip.py; `skip_rule`) gets UnquantizedLinearMethod.
- `packed_modules_mapping` (fused layer -> its checkpoint pieces) is the model class's, set by the
  loader before the model is built; skip-list entries are in the model's module names once
  `map_checkpoint_names` has run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from pagoda.model_executor.layers.linear import LinearMethod, UnquantizedLinearMethod
from pagoda.model_executor.layers.quantization.skip import is_layer_skipped


class QuantizationConfig(ABC):
    """A quantization format: its vLLM name, its settings, and the linear method per layer."""

    name: ClassVar[str]
    supports_online: ClassVar[bool] = False  # can quantize an unquantized checkpoint at load time
    skip_rule: ClassVar[str] = "exact"  # how skip-list entries match prefixes (skip.py)

    def __init__(self, skip_list: list[str] | None = None) -> None:
        self.skip_list: list[str] = list(skip_list or [])
        self.packed_modules_mapping: dict[str, list[str]] = {}

    @classmethod
    def get_name(cls) -> str:
        return cls.name

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any], source: str = "quantization_config") -> "QuantizationConfig":
        """The config of a checkpoint quantized in this format (`config`: its quantization config dict)."""

    @classmethod
    def online(cls) -> "QuantizationConfig":
        """The config that quantizes an unquantized checkpoint at load time."""
        raise ValueError(f"quantization={cls.name!r} needs a checkpoint quantized with it (config.json has no "
                         "quantization_config); it cannot quantize an unquantized checkpoint at load time")

    @abstractmethod
    def get_linear_method(self, layer: nn.Module, prefix: str) -> LinearMethod:
        """The method for the linear layer named `prefix` (UnquantizedLinearMethod where skipped)."""

    def is_layer_skipped(self, prefix: str) -> bool:
        return is_layer_skipped(prefix, self.skip_list, self.packed_modules_mapping, self.skip_rule)

    def unquantized_method(self) -> LinearMethod:
        return UnquantizedLinearMethod()

    def map_checkpoint_names(self, to_module_name: Callable[[str], str]) -> None:
        """Translate skip-list entries from checkpoint names to the model's module names (regexes stay)."""
        self.skip_list = [p if p.startswith("re:") else to_module_name(p) for p in self.skip_list]

    # ---- reading a quantization config dict -------------------------------------------------

    @staticmethod
    def get_from_keys(config: dict[str, Any], keys: list[str], source: str) -> Any:
        """The value of the first of `keys` in `config`; ValueError naming them when none is there."""
        for key in keys:
            if key in config:
                return config[key]
        raise ValueError(f"{source}.{keys[0]} is required (the quantization config has keys {sorted(config)})")

    @staticmethod
    def get_from_keys_or(config: dict[str, Any], keys: list[str], default: Any) -> Any:
        return next((config[key] for key in keys if key in config), default)

    @staticmethod
    def check_str_list(value: Any, field: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{field} must be a list of module names, got {value!r}")
        return value
