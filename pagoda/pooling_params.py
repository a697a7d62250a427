"""PoolingParams (what an embedding request asks for) and the model-side pooling configuration.

A pooling request runs its whole prompt through the model in one step and returns one vector,
pooled from the final hidden states: the last token (LAST), the first token (CLS) or the mean of all
tokens (MEAN), optionally cut to `dimensions` (Matryoshka models) and L2-normalized.

Invariants:
- A constructed PoolingParams is valid on its own; checks that need the model (dimensions the
  model supports) are the Processor's. Errors are ValueError naming the field.
- `use_activation` is vLLM's current name of `normalize` for embeddings: after construction
  `normalize` holds the decision (both given must agree), so the pooler reads `normalize` only.
- `PoolerConfig` is resolved once per model, in this order: `override_pooler_config`, then the
  sentence-transformers files (`modules.json` → the Pooling module's `config.json`, a Normalize
  module), then the architecture's default (BertModel: CLS + normalize; decoders: LAST + normalize).
- Reading a model folder here never touches the network and never imports torch.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

from pagoda.sampling_params import RequestOutputKind

POOLING_TYPES = ("LAST", "CLS", "MEAN")
POOLING_TASKS = ("embed", "encode")

# sentence-transformers Pooling config keys → our pooling type (first true one wins).
_ST_POOLING_MODES = (
    ("pooling_mode_cls_token", "CLS"),
    ("pooling_mode_mean_tokens", "MEAN"),
    ("pooling_mode_lasttoken", "LAST"),
)
_ST_UNSUPPORTED_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


@dataclass
class PoolingParams:
    """vLLM's PoolingParams: `normalize=None` and `dimensions=None` take the model's defaults."""

    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None
    task: str | None = None
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY

    def __post_init__(self) -> None:
        if self.truncate_prompt_tokens is not None:
            t = self.truncate_prompt_tokens
            if not (isinstance(t, int) and not isinstance(t, bool) and (t == -1 or t >= 1)):
                raise ValueError(
                    f"truncate_prompt_tokens must be None, -1 (the model's max_model_len) or an integer >= 1, got {t!r}"
                )
        if self.dimensions is not None:
            d = self.dimensions
            if not (isinstance(d, int) and not isinstance(d, bool) and d >= 1):
                raise ValueError(f"dimensions must be None or an integer >= 1, got {d!r}")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be None, True or False, got {self.normalize!r}")
        if self.use_activation is not None:
            if not isinstance(self.use_activation, bool):
                raise ValueError(f"use_activation must be None, True or False, got {self.use_activation!r}")
            if self.normalize is not None and self.normalize != self.use_activation:
                raise ValueError(f"use_activation={self.use_activation} contradicts normalize={self.normalize} "
                                 "(for embeddings both say whether to L2-normalize); give one of them")
            self.normalize = self.use_activation
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ValueError(f"task must be None or one of {list(POOLING_TASKS)}, got {self.task!r}")

    def clone(self) -> "PoolingParams":
        return copy.deepcopy(self)


@dataclass
class PoolerConfig:
    """How a pooling model turns hidden states into one vector (vLLM's `override_pooler_config` keys)."""

    pooling_type: str = "LAST"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.pooling_type not in POOLING_TYPES:
            raise ValueError(f"pooling_type must be one of {list(POOLING_TYPES)}, got {self.pooling_type!r}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")


def resolve_pooler_config(model_path: str, default: PoolerConfig, override: dict | None) -> PoolerConfig:
    """The model's PoolerConfig: `override` keys over the sentence-transformers files over `default`."""
    resolved = {"pooling_type": default.pooling_type, "normalize": default.normalize}
    resolved.update(read_sentence_transformers_pooling(model_path))
    override = dict(override or {})
    unknown = sorted(set(override) - set(resolved))
    if unknown:
        raise ValueError(f"override_pooler_config has unknown key(s) {unknown}; allowed: {sorted(resolved)}")
    if "pooling_type" in override and isinstance(override["pooling_type"], str):
        override["pooling_type"] = override["pooling_type"].upper()
    resolved.update(override)
    return PoolerConfig(**resolved)


def read_sentence_transformers_pooling(model_path: str) -> dict:
    """{pooling_type, normalize} from a sentence-transformers folder; {} when it is not one."""
    modules = _read_json(os.path.join(model_path, "modules.json"))
    if not isinstance(modules, list):
        return {}
    result: dict = {}
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("models.Normalize"):
            result["normalize"] = True
        elif kind.endswith("models.Pooling"):
            config = _read_json(os.path.join(model_path, module.get("path", ""), "config.json")) or {}
            for key in _ST_UNSUPPORTED_MODES:
                if config.get(key):
                    raise ValueError(f"model={model_path!r}: sentence-transformers pooling {key} is not supported; "
                                     f"set override_pooler_config={{'pooling_type': ...}} to one of {list(POOLING_TYPES)}")
            for key, pooling_type in _ST_POOLING_MODES:
                if config.get(key):
                    result["pooling_type"] = pooling_type
                    break
    if result and "normalize" not in result:
        result["normalize"] = False  # a sentence-transformers model without a Normalize module
    return result


def read_sentence_transformers_max_len(model_path: str) -> int | None:
    """`max_seq_length` of `sentence_bert_config.json` (vLLM caps max_model_len with it)."""
    config = _read_json(os.path.join(model_path, "sentence_bert_config.json"))
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def read_sentence_transformers_lowercase(model_path: str) -> bool:
    config = _read_json(os.path.join(model_path, "sentence_bert_config.json"))
    return bool(config.get("do_lower_case")) if isinstance(config, dict) else False


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
