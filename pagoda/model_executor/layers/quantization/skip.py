"""Which layers a quantization config leaves unquantized: its skip list matched against a layer's prefix.

A prefix is the layer's module name in Pagoda (e.g. "model.layers.0.self_attn.qkv_proj"); skip-list
entries are checkpoint module names, translated to Pagoda's names first where a model names modules
differently (`QuantizationConfig.map_checkpoint_names`). Three matching rules, as vLLM has them:

- "exact" (vLLM's FP8 `ignored_layers` / `modules_to_not_convert`): an entry equals the prefix.
- "substr" (vLLM's AWQ `modules_to_not_convert`, transformers' rule): an entry occurs in the prefix,
  so ["lm_head", "vision_tower"] skips every layer under them.
- "ignore" (compressed-tensors' `ignore`): an entry equals the prefix, or is "re:REGEX" matching it
  from its start (`re.match`).

Invariant: a fused layer (its last name component a key of `packed_modules_mapping`) is skipped when
its checkpoint pieces are ("qkv_proj" -> "q_proj", "k_proj", "v_proj"), and only when all of them are:
some but not all pieces listed is a ValueError, since one fused weight has one precision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

MATCH_RULES = ("exact", "substr", "ignore")


def _matches(name: str, patterns: Sequence[str], rule: str) -> bool:
    if rule == "exact":
        return name in patterns
    if rule == "substr":
        return any(p in name for p in patterns)
    return any(re.match(p[3:], name) is not None if p.startswith("re:") else p == name for p in patterns)


def piece_prefixes(prefix: str, packed_modules_mapping: Mapping[str, Sequence[str]]) -> list[str]:
    """The checkpoint modules a layer is made of: its fused pieces, or the layer itself."""
    head, _, last = prefix.rpartition(".")
    pieces = packed_modules_mapping.get(last)
    if not pieces:
        return [prefix]
    return [f"{head}.{piece}" if head else piece for piece in pieces]


def is_layer_skipped(prefix: str, patterns: Sequence[str], packed_modules_mapping: Mapping[str, Sequence[str]] = {},
                     rule: str = "exact") -> bool:
    """Whether the layer named `prefix` stays unquantized under skip list `patterns` and `rule`."""
    if rule not in MATCH_RULES:
        raise ValueError(f"skip-list rule must be one of {list(MATCH_RULES)}, got {rule!r}")
    if not patterns:
        return False
    names = piece_prefixes(prefix, packed_modules_mapping)
    hits = [_matches(name, patterns, rule) for name in names]
    if any(hits) and not all(hits):
        listed = [n for n, hit in zip(names, hits) if hit]
        raise ValueError(f"the quantization config's skip list names {listed} but not all pieces of the fused layer "
                         f"{prefix} ({names}); all pieces of a fused layer must have the same precision")
    return hits[0]
