"""Helpers every model family shares for the quantization seam: layer prefixes and fused-layer maps.

Invariants:
- A layer's prefix is its module name from the top-level model (what `named_modules()` gives), which
  is the checkpoint's name for models whose names match the checkpoint's (Llama, Qwen2, OPT, GPT-2,
  BERT); a model whose checkpoint names differ (LLaVA's transformers-5 layout, ...) provides
  `module_name(checkpoint_name)` so that skip lists can be translated.
- `packed_modules(stacked_params_mapping)` is the fused layer -> checkpoint pieces map, in shard
  order, that quantization configs use to match fused layers against skip lists.
- `load_routed_weights` is the load_weights of a model wrapping a `language_model` (the VLMs): its own
  tensors (vision tower, projector) load as they stream past, text ones go on to the text model; the
  returned names are the wrapper's full parameter names.
- FP8 KV-cache scales (`load_kv_cache_scales`, after the weights): a checkpoint tensor named like one of
  KV_SCALE_NAMES (vLLM's: `self_attn.k_scale` / `.v_scale`, the deprecated `.kv_scale` for both, ModelOpt's
  `k_proj.k_scale` / `v_proj.v_scale`, compressed-tensors' `k_proj.output_scale` / `v_proj.output_scale`) sets
  k_scale / v_scale of the Attention layer of that attention module (the model's `module_name` translating
  checkpoint names where it has one). Models' load_weights skip these tensors (no parameter has their
  name), so the scales are read in a second pass over the checkpoint's names only. As in vLLM, they take
  effect only with an FP8 kv_cache_dtype (with "auto" every scale stays 1.0); separate k/v scales win
  over kv_scale; a scale must be one positive finite value (per-tensor), else ValueError naming it.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable

import torch

logger = logging.getLogger(__name__)

# (checkpoint tensor suffix, what the rest of the name is followed by in the attention module's name, scales set).
# Longer suffixes first: ModelOpt's ".self_attn.k_proj.k_scale" also ends with ".k_scale".
KV_SCALE_NAMES = (
    (".self_attn.k_proj.k_scale", ".self_attn", "k"),  # ModelOpt
    (".self_attn.v_proj.v_scale", ".self_attn", "v"),
    (".k_proj.output_scale", "", "k"),  # compressed-tensors (llm-compressor)
    (".v_proj.output_scale", "", "v"),
    (".kv_scale", "", "kv"),  # deprecated in vLLM: one scale for keys and values
    (".k_scale", "", "k"),
    (".v_scale", "", "v"),
)


def maybe_prefix(prefix: str, name: str) -> str:
    """`prefix.name`, or `name` at the top level."""
    return f"{prefix}.{name}" if prefix else name


def packed_modules(stacked_params_mapping: list[tuple[str, str, object]]) -> dict[str, list[str]]:
    """{"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...} from (".fused", ".piece", shard_id) entries."""
    mapping: dict[str, list[str]] = {}
    for fused, piece, _ in stacked_params_mapping:
        mapping.setdefault(fused.strip("."), []).append(piece.strip("."))
    return mapping


def load_routed_weights(model, weights: Iterable) -> set[str]:
    """Load `weights` into `model` by `model._route(name)` -> ("text" | "own" | "skip", target name)."""
    from pagoda.model_executor.layers.linear import load_named_weight

    own_params = {name: p for name, p in model.named_parameters() if not name.startswith("language_model.")}
    loaded: set[str] = set()

    def text_weights():
        for name, tensor in weights:
            kind, target = model._route(name)
            if kind == "text":
                yield target, tensor
            elif kind == "own":
                load_named_weight(own_params, target, tensor, loaded)
            else:
                logger.debug("skipping checkpoint tensor %s: no such parameter", name)

    loaded.update("language_model." + name for name in model.language_model.load_weights(text_weights()))
    return loaded


def kv_scale_target(name: str) -> tuple[str, str] | None:
    """(checkpoint name of the attention module, "k" | "v" | "kv") for a KV-cache scale tensor, else None."""
    for suffix, keep, which in KV_SCALE_NAMES:
        if name.endswith(suffix):
            return name[: -len(suffix)] + keep, which
    return None


def read_kv_cache_scales(folder: str, load_format: str = "auto") -> dict[str, torch.Tensor]:
    """The checkpoint's KV-cache scale tensors by name (only those are read: safetensors headers give the
    names); {} for load_format "dummy"."""
    if load_format == "dummy":
        return {}
    from pagoda.model_executor.model_loader.weight_utils import find_weight_files

    files, use_safetensors = find_weight_files(folder, load_format)
    scales: dict[str, torch.Tensor] = {}
    for path in files:
        if use_safetensors:
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                scales.update((name, f.get_tensor(name)) for name in f.keys() if kv_scale_target(name))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (pre-zip) file: read whole only by the weight loader
                logger.debug("not looking for KV-cache scales in %s (legacy format)", path)
                continue
            scales.update((name, t) for name, t in state.items() if kv_scale_target(name))
    return scales


def _scale_value(name: str, tensor: torch.Tensor) -> float:
    if tensor.numel() != 1:
        raise ValueError(f"KV-cache scale {name!r} has shape {tuple(tensor.shape)}: only per-tensor scales (one "
                         "value per layer) are supported")
    value = float(tensor.float().item())
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"KV-cache scale {name!r} is {value}: scales must be positive and finite")
    return value


def _attention_layers(model) -> dict[str, object]:
    from pagoda.model_executor.layers.attention import Attention

    return {name: m for name, m in model.named_modules() if isinstance(m, Attention)}


def load_kv_cache_scales(model, folder: str, load_format: str, cache_dtype: str) -> int:
    """Set each Attention layer's k_scale / v_scale from the checkpoint's scale tensors when cache_dtype is
    FP8 (see the module docstring); returns how many layers got a scale."""
    scales = read_kv_cache_scales(folder, load_format)
    if cache_dtype == "auto":
        if scales:
            logger.info("the checkpoint has KV-cache scales (e.g. %s); they are not used: kv_cache_dtype='auto' keeps "
                        "the cache in the model's dtype (as vLLM)", next(iter(scales)))
        return 0
    layers = _attention_layers(model)
    to_module = getattr(model, "module_name", None)
    found: dict[str, dict[str, float]] = {}  # attention layer name -> {"k" | "v" | "kv": value}
    for name, tensor in scales.items():
        module, which = kv_scale_target(name)
        module = to_module(module) if to_module is not None else module
        layer = next((c for c in (module + ".attn", module) if c in layers), None)
        if layer is None:
            layer = next((n for n in layers if n.endswith("." + module + ".attn")), None)
        if layer is None:
            logger.warning("KV-cache scale %s is not loaded: the model has no attention layer %s.attn", name, module)
            continue
        found.setdefault(layer, {})[which] = _scale_value(name, tensor)
    for layer, values in found.items():
        attn = layers[layer]
        attn.k_scale = values.get("k", values.get("kv", 1.0))
        attn.v_scale = values.get("v", values.get("kv", 1.0))
    if found:
        logger.info("KV-cache scales loaded for %d of %d attention layers (kv_cache_dtype=%s)", len(found), len(layers),
                    cache_dtype)
    elif layers and cache_dtype != "fp8_e5m2":
        logger.warning("kv_cache_dtype=%s: the checkpoint has no KV-cache scales, so k_scale = v_scale = 1.0; values "
                       "beyond +-448 saturate (make sure the checkpoint carries k/v scales for accuracy)", cache_dtype)
    return len(found)
