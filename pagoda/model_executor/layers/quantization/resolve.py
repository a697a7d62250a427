"""Which quantization a model runs with: the checkpoint's, reconciled with the user's `quantization=`.

Rules (vLLM's `ModelConfig._verify_quantization`, with Pagoda's "not supported yet"):
- The checkpoint's method is `quant_method` of config.json's `quantization_config` (or its older
  `compression_config`; for a vision-language model also `text_config`'s), else of a
  `quantize_config.json` / `quant_config.json` beside it (AutoGPTQ / AutoAWQ files, whose method is
  read from their keys when they name none). ModelOpt's configs name their producer instead.
  llm-compressor's checkpoints name "compressed-tensors" (config.json, or the older `compression_config`).
- `quantization=None` takes the checkpoint's method (none: an unquantized model); the same name
  confirms it; a different name is a ValueError naming both fields, unless it is one of vLLM's
  compatible kernels for that method (COMPATIBLE_METHODS).
- A name vLLM does not know is a ValueError listing the allowed ones; a known one Pagoda has not
  built is "not supported yet"; a method given for an unquantized checkpoint must be able to
  quantize at load time (`supports_online`).
- The result is plain data (a method name and the checkpoint's config dict, or None) that the
  loader turns into a QuantizationConfig with `build_quant_config`; resolving builds it once too, so
  an unsupported variant (e.g. block-wise FP8) fails before any weight is read.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pagoda.model_executor.layers.quantization.registry import (
    COMPATIBLE_METHODS,
    NOT_YET_METHODS,
    NOT_YET_REASON,
    QUANTIZATION_METHODS,
    SUPPORTED_METHODS,
    get_quantization_config,
    normalize_method,
)

USER_FLAG = "--quantization, -q"
QUANT_FILES = ("quantize_config.json", "quant_config.json")


def check_quantization_name(value: Any) -> str | None:
    """The user's `quantization` value, normalized; ValueError for an unknown name or one not built yet."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"quantization ({USER_FLAG}) must be a method name (a string) or None, got {value!r}")
    name = normalize_method(value)
    if name not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization={value!r} ({USER_FLAG}) is not a quantization method; supported: "
                         f"{list(SUPPORTED_METHODS)} (vLLM's other methods, not supported yet: {list(NOT_YET_METHODS)})")
    if name in NOT_YET_METHODS:
        raise ValueError(f"quantization={value!r} ({USER_FLAG}) is not supported yet: {NOT_YET_REASON} (supported: "
                         f"{list(SUPPORTED_METHODS)})")
    return name


def _as_dict(value: Any, source: str) -> dict:
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise ValueError(f"{source} must be a JSON object, got {value!r}")
    return dict(value)


def read_checkpoint_quant_config(hf_config: Any, model_path: str | None) -> tuple[dict | None, str]:
    """(the checkpoint's quantization config, where it was found), or (None, "") for an unquantized one."""
    configs = [("config.json", hf_config)]
    text = getattr(hf_config, "text_config", None)
    if text is not None and text is not hf_config:
        configs.append(("config.json text_config", text))
    for where, config in configs:
        for key in ("quantization_config", "compression_config"):
            value = getattr(config, key, None)
            if value is not None:
                return _as_dict(value, f"{where} {key}"), f"{where} {key}"
    for name in QUANT_FILES:
        path = os.path.join(model_path or "", name)
        if model_path and os.path.isfile(path):
            with open(path) as f:
                try:
                    return _as_dict(json.load(f), name), name
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} is not valid JSON: {exc}") from None
    return None, ""


def checkpoint_method(config: dict, source: str) -> str:
    """The normalized method a checkpoint's quantization config names; ValueError naming the field."""
    producer = config.get("producer")
    if isinstance(producer, dict) and producer.get("name") == "modelopt":
        algo = str((config.get("quantization") or {}).get("quant_algo", config.get("quant_algo", "")))
        return "modelopt_fp4" if "FP4" in algo.upper() else "modelopt"
    method = config.get("quant_method")
    if method is None and source in QUANT_FILES:  # AutoAWQ / AutoGPTQ files name no method
        if "w_bit" in config or "q_group_size" in config:
            return "awq"
        if "bits" in config and ("desc_act" in config or "group_size" in config):
            return "gptq"
    if not isinstance(method, str) or not method:
        raise ValueError(f"{source}.quant_method is required: the name of the checkpoint's quantization method "
                         f"(e.g. {list(SUPPORTED_METHODS)}), got {method!r}")
    name = normalize_method(method)
    if name not in QUANTIZATION_METHODS:
        raise ValueError(f"{source}.quant_method={method!r} is not a quantization method vLLM or Pagoda knows; "
                         f"supported: {list(SUPPORTED_METHODS)} (known, not supported yet: {list(NOT_YET_METHODS)})")
    return name


def resolve_quantization(user: Any, hf_config: Any, model_path: str | None) -> tuple[str | None, dict | None]:
    """(method, the checkpoint's quantization config or None) for a model; ValueError per the module rules."""
    wanted = check_quantization_name(user)
    config, source = read_checkpoint_quant_config(hf_config, model_path)
    if config is None:
        if wanted is not None:
            build_quant_config(wanted, None)  # can this method quantize at load time?
        return wanted, None
    found = checkpoint_method(config, source)
    if wanted is not None and wanted != found and wanted not in COMPATIBLE_METHODS.get(found, ()):
        raise ValueError(f"quantization={user!r} ({USER_FLAG}) does not match the checkpoint's method {found!r} "
                         f"({source}.quant_method); leave quantization unset to use the checkpoint's, or give "
                         f"{found!r}")
    method = wanted or found
    if method in NOT_YET_METHODS:
        raise ValueError(f"the checkpoint is quantized with {method!r} ({source}.quant_method), which is not supported "
                         f"yet: {NOT_YET_REASON} (supported: {list(SUPPORTED_METHODS)})")
    build_quant_config(method, config, source)
    return method, config


def build_quant_config(method: str | None, config: dict | None, source: str = "config.json quantization_config"):
    """The QuantizationConfig of a resolved method (None for an unquantized model): from the checkpoint's
    config, or the load-time quantizer when `config` is None."""
    if method is None:
        return None
    cls = get_quantization_config(method)
    return cls.online() if config is None else cls.from_config(config, source)
