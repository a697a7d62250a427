"""Helpers every model family shares for the quantization seam: layer prefixes and fused-layer maps.

Invariants:
- A layer's prefix is its module name from the top-level model (what `named_modules()` gives), which
  is the checkpoint's name for models whose names match the checkpoint's (Llama, Qwen2, OPT, GPT-2,
  BERT); a model whose checkpoint names differ (LLaVA's transformers-5 layout, ...) provides
  `module_name(checkpoint_name)` so that skip lists can be translated.
- `packed_modules(stacked_params_mapping)` is the fused layer -> checkpoint pieces map, in shard
  order, that quantization configs use to match fused layers against skip lists.
"""

from __future__ import annotations


def maybe_prefix(prefix: str, name: str) -> str:
    """`prefix.name`, or `name` at the top level."""
    return f"{prefix}.{name}" if prefix else name


def packed_modules(stacked_params_mapping: list[tuple[str, str, object]]) -> dict[str, list[str]]:
    """{"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...} from (".fused", ".piece", shard_id) entries."""
    mapping: dict[str, list[str]] = {}
    for fused, piece, _ in stacked_params_mapping:
        mapping.setdefault(fused.strip("."), []).append(piece.strip("."))
    return mapping
