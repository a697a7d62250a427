"""Offline resolution of Hugging Face model folders and their configs.

Invariants:
- Nothing here touches the network: a hub id resolves only through the local Hugging Face cache
  (`local_files_only=True`), and a miss is a ValueError that says where we looked.
- `hf_overrides` are applied to the loaded config before anything reads it.
- `load_hf_config` imports transformers only when `hf_config_reader` cannot reproduce its result
  (remote code, a model type it does not know, anything in doubt); both give equal attributes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pagoda.hf_config_reader import read_hf_config


def resolve_model_path(model: str, revision: str | None = None, field_name: str = "model") -> str:
    """Return a local folder for `model`: the folder itself, or a snapshot in the HF cache."""
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if os.path.exists(expanded):
        raise ValueError(f"{field_name}={model!r} is a file; it must be a model folder or a hub id")
    from huggingface_hub import snapshot_download

    cache_dir = hub_cache_dir()
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


def load_hf_config(model_path: str, trust_remote_code: bool, hf_overrides: dict | None) -> Any:
    """Load `config.json` and apply `hf_overrides` (a dict of attributes).

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
    return config


def config_dtype_name(hf_config: Any) -> str | None:
    """The checkpoint's dtype as a torch attribute name, if the config records one."""
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    return name if name in ("float16", "bfloat16", "float32") else None


def derive_max_model_len(hf_config: Any) -> int:
    """The longest sequence the model's positions allow."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def load_generation_config(model_path: str) -> dict:
    """The raw `generation_config.json`, or {} when the folder has none."""
    path = os.path.join(model_path, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
