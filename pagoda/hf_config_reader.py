"""Read a model folder's `config.json` into a config object without importing transformers.

`hf_utils.load_hf_config` tries this first: `import transformers` plus `AutoConfig.from_pretrained`
costs seconds of start-up (each model's configuration module pulls in torch._dynamo), while
reading the JSON takes a millisecond.

Invariants:
- `read_hf_config` returns a `PlainHFConfig` only when it reproduces what transformers 5
  (5.17 … 5.23) builds; in any doubt it returns None and the caller asks transformers, so every
  error and edge case stays transformers' own. It accepts a folder when config.json names a
  `model_type` of `_SCHEMAS`, asks for no remote code (`auto_map`), gives every field a value of
  the type transformers' strict dataclass checks, passes the class validators, has unnested rope
  settings of a type Pagoda implements (default, linear, llama3), and holds no key whose handling
  differs between 5.x versions (top-level `partial_rotary_factor`, legacy layer-type names, an odd
  head_dim, ...).
- A `PlainHFConfig`'s attributes are the transformers config's: the JSON's keys, the class's
  defaults for absent fields, and what its `__post_init__` derives (head_dim, num_key_value_heads,
  word_embed_proj_dim, layer_types, sliding_window, rope_parameters, dtype as a torch.dtype,
  id2label/label2id). Legacy `rope_scaling`/`rope_theta` keys fold into `rope_parameters` and do not
  stay attributes; `rope_scaling` reads `rope_parameters`; GPT-2's aliases (`hidden_size` for
  `n_embd`, ...) read and write the real field; generation keys (`max_length`, ...) are dropped.
- `_SCHEMAS` copy the dataclass fields of transformers' `models/<type>/configuration_<type>.py`
  (identical in 5.17 and 5.23); tests/models/test_hf_config_reader.py checks them against the installed
  transformers.
- Nothing here imports transformers; torch is imported only to turn a dtype name into a torch.dtype.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

# Field type specs, as transformers' strict dataclasses check them: `int` excludes bool, `float`
# excludes int, None allows null. _INTS / _STRS stand for list[int] / list[str].
_INTS, _STRS = "list[int]", "list[str]"
INT, INT_, FLOAT, NUM, NUM_ = (int,), (int, None), (float,), (float, int), (float, int, None)
BOOL, BOOL_, STR, STR_, DICT_ = (bool,), (bool, None), (str,), (str, None), (dict, None)
IDS = (int, _INTS, None)

# PreTrainedConfig's own fields (problem_type: only None is taken here; a label task falls back).
_BASE: dict[str, tuple[Any, tuple]] = {
    "transformers_version": (None, STR_), "architectures": (None, (_STRS, None)),
    "output_hidden_states": (False, BOOL_), "return_dict": (True, BOOL_), "dtype": (None, STR_),
    "chunk_size_feed_forward": (0, INT), "is_encoder_decoder": (False, BOOL), "id2label": (None, DICT_),
    "label2id": (None, DICT_), "problem_type": (None, (None,)),
}
_LLAMA = {
    "vocab_size": (32000, INT), "hidden_size": (4096, INT), "intermediate_size": (11008, INT),
    "num_hidden_layers": (32, INT), "num_attention_heads": (32, INT), "num_key_value_heads": (None, INT_),
    "hidden_act": ("silu", STR), "max_position_embeddings": (2048, INT), "initializer_range": (0.02, FLOAT),
    "rms_norm_eps": (1e-6, FLOAT), "use_cache": (True, BOOL), "pad_token_id": (None, INT_),
    "bos_token_id": (1, INT_), "eos_token_id": (2, IDS), "pretraining_tp": (1, INT_),
    "tie_word_embeddings": (False, BOOL), "rope_parameters": (None, DICT_), "attention_bias": (False, BOOL),
    "attention_dropout": (0.0, NUM_), "mlp_bias": (False, BOOL), "head_dim": (None, INT_),
}
_MISTRAL = {
    "vocab_size": (32000, INT), "hidden_size": (4096, INT), "intermediate_size": (14336, INT),
    "num_hidden_layers": (32, INT), "num_attention_heads": (32, INT), "num_key_value_heads": (8, INT),
    "head_dim": (None, INT_), "hidden_act": ("silu", STR), "max_position_embeddings": (4096 * 32, INT),
    "initializer_range": (0.02, FLOAT), "rms_norm_eps": (1e-6, FLOAT), "use_cache": (True, BOOL),
    "pad_token_id": (None, INT_), "bos_token_id": (1, INT_), "eos_token_id": (2, IDS),
    "tie_word_embeddings": (False, BOOL), "rope_parameters": (None, DICT_), "sliding_window": (4096, INT_),
    "attention_dropout": (0.0, NUM),
}
_QWEN2 = {
    "vocab_size": (151936, INT), "hidden_size": (4096, INT), "intermediate_size": (22016, INT),
    "num_hidden_layers": (32, INT), "num_attention_heads": (32, INT), "num_key_value_heads": (32, INT_),
    "hidden_act": ("silu", STR), "max_position_embeddings": (32768, INT), "initializer_range": (0.02, FLOAT),
    "rms_norm_eps": (1e-6, FLOAT), "use_cache": (True, BOOL), "tie_word_embeddings": (False, BOOL),
    "rope_parameters": (None, DICT_), "use_sliding_window": (False, BOOL), "sliding_window": (4096, INT_),
    "max_window_layers": (28, INT), "layer_types": (None, (_STRS, None)), "attention_dropout": (0.0, NUM),
    "pad_token_id": (None, INT_), "bos_token_id": (None, INT_), "eos_token_id": (None, IDS),
}
_QWEN3 = {**_QWEN2, "head_dim": (128, INT), "attention_bias": (False, BOOL)}
_OPT = {
    "vocab_size": (50272, INT), "hidden_size": (768, INT), "num_hidden_layers": (12, INT), "ffn_dim": (3072, INT),
    "max_position_embeddings": (2048, INT), "do_layer_norm_before": (True, BOOL),
    "_remove_final_layer_norm": (False, BOOL), "word_embed_proj_dim": (None, INT_), "dropout": (0.1, NUM),
    "attention_dropout": (0.0, NUM), "num_attention_heads": (12, INT), "activation_function": ("relu", STR),
    "layerdrop": (0.0, NUM), "init_std": (0.02, FLOAT), "use_cache": (True, BOOL), "pad_token_id": (1, INT_),
    "bos_token_id": (2, INT_), "eos_token_id": (2, IDS), "enable_bias": (True, BOOL),
    "layer_norm_elementwise_affine": (True, BOOL), "tie_word_embeddings": (True, BOOL),
}
_GPT2 = {
    "vocab_size": (50257, INT), "n_positions": (1024, INT), "n_embd": (768, INT), "n_layer": (12, INT),
    "n_head": (12, INT), "n_inner": (None, INT_), "activation_function": ("gelu_new", STR),
    "resid_pdrop": (0.1, NUM), "embd_pdrop": (0.1, NUM), "attn_pdrop": (0.1, NUM),
    "layer_norm_epsilon": (1e-5, FLOAT), "initializer_range": (0.02, FLOAT), "summary_type": ("cls_index", STR),
    "summary_use_proj": (True, BOOL), "summary_activation": (None, STR_), "summary_proj_to_labels": (True, BOOL),
    "summary_first_dropout": (0.1, NUM), "scale_attn_weights": (True, BOOL), "use_cache": (True, BOOL),
    "bos_token_id": (50256, INT_), "eos_token_id": (50256, IDS), "pad_token_id": (None, INT_),
    "scale_attn_by_inverse_layer_idx": (False, BOOL), "reorder_and_upcast_attn": (False, BOOL),
    "add_cross_attention": (False, BOOL), "tie_word_embeddings": (True, BOOL),
}
_BERT = {
    "vocab_size": (30522, INT), "hidden_size": (768, INT), "num_hidden_layers": (12, INT),
    "num_attention_heads": (12, INT), "intermediate_size": (3072, INT), "hidden_act": ("gelu", STR),
    "hidden_dropout_prob": (0.1, NUM), "attention_probs_dropout_prob": (0.1, NUM),
    "max_position_embeddings": (512, INT), "type_vocab_size": (2, INT), "initializer_range": (0.02, FLOAT),
    "layer_norm_eps": (1e-12, FLOAT), "pad_token_id": (0, INT_), "use_cache": (True, BOOL),
    "classifier_dropout": (None, NUM_), "is_decoder": (False, BOOL), "add_cross_attention": (False, BOOL),
    "bos_token_id": (None, INT_), "eos_token_id": (None, IDS), "tie_word_embeddings": (True, BOOL),
}
_SCHEMAS: dict[str, dict[str, tuple[Any, tuple]]] = {
    "llama": _LLAMA, "mistral": _MISTRAL, "qwen2": _QWEN2, "qwen3": _QWEN3, "opt": _OPT, "gpt2": _GPT2, "bert": _BERT,
}
SUPPORTED_MODEL_TYPES = tuple(_SCHEMAS)
_ROPE_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # the classes with a rope_parameters field
_ATTRIBUTE_MAPS = {"gpt2": {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                            "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}}
# Rope types Pagoda implements, with the keys transformers' validator requires of each.
_ROPE_REQUIRED = {"default": (), "linear": ("factor",),
                  "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor")}
ROPE_TYPE_FIELDS = _ROPE_REQUIRED  # public: hf_utils checks --rope-scaling overrides against it
_LAYER_TYPES = ("full_attention", "sliding_attention")
# GenerationConfig._get_default_generation_params(): PreTrainedConfig drops these keys.
_GENERATION_KEYS = frozenset((
    "assistant_confidence_threshold", "assistant_lookbehind", "bad_words_ids", "begin_suppress_tokens",
    "diversity_penalty", "do_sample", "early_stopping", "encoder_no_repeat_ngram_size",
    "encoder_repetition_penalty", "epsilon_cutoff", "eta_cutoff", "exponential_decay_length_penalty",
    "forced_bos_token_id", "forced_eos_token_id", "length_penalty", "max_length", "min_length",
    "no_repeat_ngram_size", "num_assistant_tokens", "num_assistant_tokens_schedule", "num_beam_groups",
    "num_beams", "num_return_sequences", "output_scores", "remove_invalid_values", "repetition_penalty",
    "return_dict_in_generate", "suppress_tokens", "target_lookbehind", "temperature", "top_k", "top_p",
    "typical_p", "use_cache",
))
# Keys transformers treats specially (properties, popped internals, remote code, sub-configs, or
# handling that changed within 5.x): their presence sends the folder to transformers.
_DEFER_KEYS = frozenset((
    "auto_map", "configuration_files", "output_attentions", "attn_implementation", "experts_implementation",
    "_attn_implementation", "_experts_implementation", "_attn_implementation_internal",
    "_experts_implementation_internal", "per_layer_config", "name_or_path", "_commit_hash", "use_return_dict",
    "sub_configs", "partial_rotary_factor", "mlp_layer_types", "text_config", "num_heads", "embed_dim",
    "base_model_tp_plan", "_post_init_done", "_output_attentions",
))
_HANDLED_KEYS = frozenset(("rope_scaling", "torch_dtype", "num_labels"))  # JSON keys mirrored below
_DEFER_OVERRIDES = _DEFER_KEYS | {"rope_scaling", "num_labels"}  # setters whose effect differs by version


class _Defer(Exception):
    """This config is transformers' to load (the message says why)."""


class PlainHFConfig:
    """A transformers-5 config's attributes as plain Python values (see the module docstring)."""

    def __init__(self, model_type: str, attributes: dict[str, Any], attribute_map: dict[str, str] | None = None):
        object.__setattr__(self, "_attribute_map", dict(attribute_map or {}))
        self.__dict__.update(attributes)
        self.model_type = model_type

    def __getattr__(self, key: str) -> Any:  # only called when normal lookup fails: aliases
        target = self.__dict__.get("_attribute_map", {}).get(key)
        if target is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")
        return getattr(self, target)

    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, self.__dict__.get("_attribute_map", {}).get(key, key), value)

    @property
    def rope_scaling(self) -> Any:
        return self.rope_parameters

    @rope_scaling.setter
    def rope_scaling(self, value: Any) -> None:
        self.rope_parameters = value

    @property
    def torch_dtype(self) -> Any:
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = value

    @property
    def name_or_path(self) -> str | None:
        return self.__dict__.get("_name_or_path")

    @property
    def num_labels(self) -> int | None:
        return len(self.id2label) if self.id2label is not None else None

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> "PlainHFConfig":
        return self  # a text-only model is its own text config

    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "_attribute_map"}
        if out.get("dtype") is not None and not isinstance(out["dtype"], str):
            out["dtype"] = str(out["dtype"]).replace("torch.", "")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_type}) {self.to_dict()}"


def read_hf_config(model_path: str, hf_overrides: dict | None = None) -> PlainHFConfig | None:
    """`model_path`/config.json as transformers would load it, or None when transformers must load it.

    `hf_overrides` are only checked here (the caller sets them): one that transformers would reject
    or treat specially sends the folder to transformers too.
    """
    path = os.path.join(model_path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        config = _build(raw, str(model_path))
        _check_overrides(config, hf_overrides or {})
        return config
    except (_Defer, OSError, ValueError, TypeError, KeyError, ArithmeticError) as exc:
        logger.debug("%s is read by transformers: %s: %s", path, type(exc).__name__, exc)
        return None


def _fits(value: Any, spec: tuple) -> bool:
    for kind in spec:
        if kind is None:
            ok = value is None
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == _INTS:
            ok = isinstance(value, list) and all(_fits(v, INT) for v in value)
        elif kind == _STRS:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, kind)
        if ok:
            return True
    return False


def _build(raw: Any, model_path: str) -> PlainHFConfig:
    if not isinstance(raw, dict):
        raise _Defer("config.json is not an object")
    model_type = raw.get("model_type")
    if model_type not in _SCHEMAS:
        raise _Defer(f"model_type={model_type!r} has no fast reader")
    schema = {**_BASE, **_SCHEMAS[model_type]}
    aliases = _ATTRIBUTE_MAPS.get(model_type, {})
    if model_type == "mistral" and "layer_types" in raw:
        raise _Defer("AutoConfig reads a mistral config with layer_types as ministral")
    if "layer_types" in raw and "layer_types" not in schema:
        raise _Defer("layer_types on a model type without them")
    deferred = sorted(k for k in raw if k in _DEFER_KEYS or k in aliases
                      or (hasattr(PlainHFConfig, k) and k not in _HANDLED_KEYS))
    if deferred:
        raise _Defer(f"keys {deferred}")
    _reject_special_floats(raw)
    attrs: dict[str, Any] = {}
    for name, (default, spec) in schema.items():
        value = raw.get(name, default)
        if not _fits(value, spec):
            raise _Defer(f"{name}={value!r} has a type transformers rejects")
        attrs[name] = value
    extras = {k: v for k, v in raw.items() if k not in schema and k != "model_type"}
    _POST_INIT[model_type](attrs)
    _base_post_init(attrs, extras, model_type)
    attrs.update((k, v) for k, v in extras.items() if k not in _GENERATION_KEYS)
    attrs["_name_or_path"] = model_path  # from_pretrained sets it last, over any "_name_or_path" key
    return PlainHFConfig(model_type, attrs, aliases)


def _reject_special_floats(value: Any) -> None:
    """transformers decodes {"__float__": "NaN"}-style values; leave those to it."""
    if isinstance(value, dict):
        if "__float__" in value:
            raise _Defer("encoded special float")
        for v in value.values():
            _reject_special_floats(v)
    elif isinstance(value, list):
        for v in value:
            _reject_special_floats(v)


def _post_init_llama(attrs: dict) -> None:
    if attrs["hidden_size"] % attrs["num_attention_heads"]:  # LlamaConfig.validate_architecture
        raise _Defer("hidden_size is not a multiple of num_attention_heads")
    if not 0.0 <= attrs["initializer_range"] <= 1.0:  # its interval validator
        raise _Defer(f"initializer_range={attrs['initializer_range']}")
    _post_init_mistral(attrs)


def _post_init_mistral(attrs: dict) -> None:
    if attrs["head_dim"] is None:
        attrs["head_dim"] = attrs["hidden_size"] // attrs["num_attention_heads"]
    if attrs["num_key_value_heads"] is None:
        attrs["num_key_value_heads"] = attrs["num_attention_heads"]


def _post_init_qwen(attrs: dict) -> None:
    attrs["sliding_window"] = attrs["sliding_window"] if attrs["use_sliding_window"] else None
    if attrs["num_key_value_heads"] is None:
        attrs["num_key_value_heads"] = attrs["num_attention_heads"]
    layers = attrs["num_hidden_layers"]
    if attrs["layer_types"] is None:
        window = attrs["sliding_window"] is not None
        attrs["layer_types"] = ["sliding_attention" if window and i >= attrs["max_window_layers"] else "full_attention"
                                for i in range(layers)]
    elif len(attrs["layer_types"]) != layers or not set(attrs["layer_types"]) <= set(_LAYER_TYPES):
        raise _Defer(f"layer_types={attrs['layer_types']!r}")


def _post_init_opt(attrs: dict) -> None:
    if attrs["word_embed_proj_dim"] is None:
        attrs["word_embed_proj_dim"] = attrs["hidden_size"]


_POST_INIT = {"llama": _post_init_llama, "mistral": _post_init_mistral, "qwen2": _post_init_qwen,
              "qwen3": _post_init_qwen, "opt": _post_init_opt, "gpt2": lambda attrs: None, "bert": lambda attrs: None}


def _base_post_init(attrs: dict, extras: dict, model_type: str) -> None:
    """PreTrainedConfig.__post_init__ and its validators, for the cases accepted here."""
    torch_dtype = extras.pop("torch_dtype", None)
    if attrs["dtype"] is None and torch_dtype is not None:
        if not isinstance(torch_dtype, str):
            raise _Defer(f"torch_dtype={torch_dtype!r}")
        attrs["dtype"] = torch_dtype
    if attrs["dtype"] is not None:
        import torch

        dtype = getattr(torch, attrs["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise _Defer(f"dtype={attrs['dtype']!r} is not a torch dtype")
        attrs["dtype"] = dtype
    _labels(attrs, extras)
    if model_type in _ROPE_TYPES:
        _standardize_rope(attrs, extras)
    elif {"rope_scaling", "rope_theta", "rope_parameters"} & extras.keys():
        raise _Defer("rope keys on a model without rotary embeddings")


def _labels(attrs: dict, extras: dict) -> None:
    """id2label/label2id as PreTrainedConfig derives them (num_labels is a property of id2label)."""
    if "num_labels" in extras and not _fits(extras["num_labels"], INT):
        raise _Defer(f"num_labels={extras['num_labels']!r}")
    num_labels = extras.pop("num_labels", None)
    label2id = attrs["label2id"]
    if label2id is not None and not (all(_fits(v, INT) for v in label2id.values())
                                     or all(isinstance(v, str) for v in label2id.values())):
        raise _Defer("label2id values must be all ints or all strings")
    if attrs["id2label"] is not None:
        if not all(isinstance(v, str) for v in attrs["id2label"].values()):
            raise _Defer("id2label values must be strings")
        attrs["id2label"] = {int(k): v for k, v in attrs["id2label"].items()}
        if num_labels is None or num_labels == len(attrs["id2label"]):
            return
    num_labels = 2 if num_labels is None else num_labels
    attrs["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
    attrs["label2id"] = {v: k for k, v in attrs["id2label"].items()}


def _standardize_rope(attrs: dict, extras: dict) -> None:
    """RotaryEmbeddingConfigMixin.convert_rope_params_to_dict + standardize_rope_params + validate_rope."""
    scaling = extras.pop("rope_scaling", None)
    params = scaling or attrs["rope_parameters"]
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise _Defer(f"rope_scaling={params!r}")
    if any(isinstance(v, dict) or k in _LAYER_TYPES for k, v in params.items()):
        raise _Defer("rope parameters nested by layer type")
    theta = extras.pop("rope_theta", 10000.0)
    params.setdefault("rope_theta", theta)
    params.setdefault("rope_type", params.get("type", "default"))
    rope_type = params["rope_type"]
    if rope_type not in _ROPE_REQUIRED:
        raise _Defer(f"rope_type={rope_type!r}")
    if rope_type == "llama3":
        params.setdefault("original_max_position_embeddings", attrs["max_position_embeddings"])
    for key in ("rope_theta",) + _ROPE_REQUIRED[rope_type]:
        if not _fits(params.get(key), NUM):
            raise _Defer(f"rope parameter {key}={params.get(key)!r}")
    head_dim = attrs.get("head_dim", extras.get("head_dim"))  # Qwen2 has no head_dim field
    if head_dim is not None and (not _fits(head_dim, INT) or (head_dim > 4 and head_dim % 2)):
        raise _Defer(f"head_dim={head_dim!r}: transformers 5.23 rejects odd ones, 5.17 does not")
    attrs["rope_parameters"] = params


def _check_overrides(config: PlainHFConfig, overrides: dict) -> None:
    schema = {**_BASE, **_SCHEMAS[config.model_type]}
    for key, value in overrides.items():
        if key in _DEFER_OVERRIDES:
            raise _Defer(f"hf_overrides[{key!r}]")
        field = "dtype" if key == "torch_dtype" else key
        if field in schema and not _fits(value, schema[field][1]):
            raise _Defer(f"hf_overrides[{key!r}]={value!r} has a type transformers rejects")
