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
"""

from __future__ import annotations

import logging
from typing import Iterable

logger = logging.getLogger(__name__)


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
