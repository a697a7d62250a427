"""Offline resolution of Hugging Face model folders and their configs.

Invariants:
- Nothing here touches the network: a hub id resolves only through the local Hugging Face cache
  (`local_files_only=True`), and a miss is a ValueError that says where we looked. The one exception is an
  `s3://` model, which `resolve_model_path` hands to s3_storage.py (a verified local copy, or a ValueError).
- `hf_overrides`, then the `rope_scaling` / `rope_theta` overrides (vLLM's engine args), are applied to the
  loaded config before anything reads it; the rope overrides land in `config.rope_parameters` (transformers
  5's spelling, which the models read) and only rope types Pagoda implements pass.
- `load_hf_config` imports transformers only when `hf_config_reader` cannot reproduce its result
  (remote code, a model type it does not know, anything in doubt); both give equal attributes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pagoda.hf_config_reader import read_hf_config


def resolve_model_path(model: str, revision: str | None = None, field_name: str = "model",
                       cache_dir: str | None = None) -> str:
    """Return a local folder for `model`: the folder itself, or a snapshot in the HF cache.

    `cache_dir` (vLLM's --download-dir) is the Hugging Face cache folder to look in instead of the default one.
    An `s3://bucket/prefix` name is downloaded (or found complete) in the local cache first (s3_storage.py).
    """
    if isinstance(model, str) and model[:5].lower() == "s3://":
        from pagoda.s3_storage import resolve_s3_model

        return resolve_s3_model(model, field_name, cache_dir)
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if os.path.exists(expanded):
        raise ValueError(f"{field_name}={model!r} is a file; it must be a model folder or a hub id")
    from huggingface_hub import snapshot_download

    cache_dir = os.path.expanduser(cache_dir) if cache_dir else hub_cache_dir()
    try:
        return snapshot_download(repo_id=model, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        raise ValueError(
            f"{field_name}={model!r} is neither a local folder nor in the Hugging Face cache "
            f"({cache_dir}). Pagoda works offline: copy the model folder to this machine and "
            f"pass its path. ({type(exc).__name__})"
        ) from None


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def load_hf_config(model_path: str, trust_remote_code: bool, hf_overrides: dict | None,
                   rope_scaling: dict | None = None, rope_theta: float | None = None) -> Any:
    """Load `config.json` and apply `hf_overrides` (a dict of attributes), then the rope overrides.

    The model types Pagoda serves are read without transformers (seconds of start-up saved);
    anything else, and every folder with `trust_remote_code`, goes through `AutoConfig`.
    """
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise ValueError(f"model={model_path!r} has no config.json; it is not a Hugging Face model folder")
    config = None if trust_remote_code else read_hf_config(model_path, hf_overrides)
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    for key, value in (hf_overrides or {}).items():
        setattr(config, key, value)
    apply_rope_overrides(config, rope_scaling, rope_theta)
    return config


def apply_rope_overrides(config: Any, rope_scaling: dict | None, rope_theta: float | None) -> None:
    """vLLM's `rope_scaling` (JSON) and `rope_theta` engine args, written into `config.rope_parameters`.

    `rope_scaling` replaces the scaling part of the rope settings (its `rope_type`, or legacy `type`, and
    that type's fields); the base frequency is kept unless `rope_theta` sets it. ValueError/TypeError name
    the argument for a model without rotary embeddings, a rope type Pagoda does not implement, or a bad value.
    """
    if not rope_scaling and rope_theta is None:
        return
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        names = " and ".join(n for n, v in (("rope_scaling", rope_scaling), ("rope_theta", rope_theta)) if v)
        raise ValueError(f"{names}: model_type {getattr(config, 'model_type', None)!r} has no (single) set of "
                         "rotary-embedding parameters to override")
    params = dict(params)
    if rope_scaling:
        params = _scaled_rope(params, rope_scaling, getattr(config, "max_position_embeddings", None))
    if rope_theta is not None:
        if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or not rope_theta > 0:
            raise ValueError(f"rope_theta must be a number > 0, got {rope_theta!r}")
        params["rope_theta"] = float(rope_theta)
    config.rope_parameters = params


def _scaled_rope(params: dict, rope_scaling: Any, max_positions: int | None) -> dict:
    from pagoda.hf_config_reader import ROPE_TYPE_FIELDS

    if not isinstance(rope_scaling, dict):
        raise TypeError(f"rope_scaling must be a JSON object (dict), got {type(rope_scaling).__name__}")
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if rope_type not in ROPE_TYPE_FIELDS:
        raise ValueError(f"rope_scaling rope_type={rope_type!r} is not supported; supported: "
                         f"{list(ROPE_TYPE_FIELDS)} (each with its fields, e.g. linear needs 'factor')")
    scaled = {k: v for k, v in params.items() if k in ("rope_theta", "partial_rotary_factor")}
    scaled.update((k, v) for k, v in rope_scaling.items() if k != "type")
    scaled["rope_type"] = rope_type
    if rope_type == "llama3" and max_positions is not None:
        scaled.setdefault("original_max_position_embeddings", max_positions)
    for key in ROPE_TYPE_FIELDS[rope_type]:
        value = scaled.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"rope_scaling of rope_type {rope_type!r} needs {key} > 0, got {value!r}")
    return scaled


def config_dtype_name(hf_config: Any) -> str | None:
    """The checkpoint's dtype as a torch attribute name, if the config records one."""
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    return name if name in ("float16", "bfloat16", "float32") else None


def derive_max_model_len(hf_config: Any) -> int:
    """The longest sequence the model's positions allow; linear rope scaling stretches it by its factor (vLLM)."""
    limit = 2048
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    rope = getattr(hf_config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "linear":
        factor = rope.get("factor")
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 1:
            limit = int(limit * factor)
    return limit


def load_generation_config(model_path: str) -> dict:
    """The raw `generation_config.json`, or {} when the folder has none."""
    path = os.path.join(model_path, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
