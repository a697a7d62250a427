"""vLLM's ways of asking for speculative decoding -> one `config.SpeculativeConfig`.

Two interfaces, never both at once: vLLM's `speculative_config` dict (`LLM(speculative_config=...)`,
`--speculative-config JSON`) and vLLM 0.6's flags that KServe seeds still pass
(`--speculative-model [ngram] --num-speculative-tokens N --ngram-prompt-lookup-max M`, or
`--speculative-model /mnt/models/<draft> --num-speculative-tokens N`, ...).

Two methods: "ngram" (prompt lookup) and "draft_model" (a smaller model with the target's vocabulary). As in
vLLM, `{"model": X}` without a method means "ngram" when X is "ngram" / "[ngram]", else a draft model; so does
`--speculative-model X`.

Invariants:
- `build_speculative_config` needs no model folder (the server checks it before loading anything);
  it returns None when speculation is off, else a validated SpeculativeConfig. For a draft model its `model`
  is the name as given and `draft_model_config` None: `EngineArgs.create_config` resolves the folder (offline),
  builds the draft's ModelConfig and checks it against the target's.
- Every bad value is a ValueError/TypeError naming the user's own key or flag; vLLM keys and methods
  Pagoda does not implement yet say "not supported yet" (engine_args_compat.py lists them).
- num_speculative_tokens is required with either method; the prompt-lookup bounds are n-gram options, an error
  with a draft model.
- Defaults follow vLLM: with the dict, both lookup bounds 5 when neither is given, else each defaults
  to the other; with vLLM 0.6's flags, prompt_lookup_max is required and prompt_lookup_min defaults to 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pagoda import config as cfg
from pagoda import engine_args_compat as compat

logger = logging.getLogger(__name__)

# speculative decoding: the speculative_config keys Pagoda implements, vLLM's names of the n-gram method (as a
# method or a model), vLLM's lookup bounds when neither is given, and vLLM 0.6's flags -> their keys
SPECULATIVE_KEYS = ("method", "model", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min",
                    "disable_by_batch_size", "max_model_len", "draft_tensor_parallel_size")
NGRAM_NAMES = ("ngram", "[ngram]")
NGRAM_LOOKUP_DEFAULT = 5
LEGACY_SPECULATIVE_FLAGS = {"speculative_model": "model", "num_speculative_tokens": "num_speculative_tokens",
                            "ngram_prompt_lookup_max": "prompt_lookup_max",
                            "ngram_prompt_lookup_min": "prompt_lookup_min",
                            "speculative_disable_by_batch_size": "disable_by_batch_size",
                            "speculative_max_model_len": "max_model_len",
                            "speculative_draft_tensor_parallel_size": "draft_tensor_parallel_size"}


# ---- speculative decoding: vLLM's speculative_config, or vLLM 0.6's flags -> SpeculativeConfig ---------------
def build_speculative_config(speculative_config: Any, legacy: Mapping[str, Any],
                             max_model_len: int | None = None) -> cfg.SpeculativeConfig | None:
    """The SpeculativeConfig of vLLM's `speculative_config` dict, or of vLLM 0.6's flags (`legacy`: EngineArgs
    field of LEGACY_SPECULATIVE_FLAGS -> value, None where not given); None when neither turns speculation on.
    `max_model_len` is the target model's when known. ValueError/TypeError naming the key or flag otherwise."""
    given = {name: value for name, value in legacy.items() if value is not None}
    if speculative_config is not None and not isinstance(speculative_config, (dict, cfg.SpeculativeConfig)):
        raise TypeError("speculative_config must be a dict (a JSON object for --speculative-config), got "
                        f"{type(speculative_config).__name__}")
    if speculative_config and given:
        raise ValueError(f"speculative_config (--speculative-config) and vLLM 0.6's flags ({_flags(given)}) both "
                         "configure speculative decoding; give one of them")
    if isinstance(speculative_config, cfg.SpeculativeConfig):  # its draft_model_config is built again
        values, name = {key: getattr(speculative_config, key) for key in SPECULATIVE_KEYS}, _config_key
    elif speculative_config:
        values, name = _from_speculative_dict(speculative_config), _config_key
    elif given:
        values, name = _from_legacy_flags(given), _legacy_flag
    else:
        return None
    if values is None:
        return None
    cfg.check_speculative_values(values, name)
    limit = values.get("max_model_len")
    if limit is not None and max_model_len is not None and limit > max_model_len:
        raise ValueError(f"{name('max_model_len')} cannot be larger than the model's max_model_len "
                         f"({max_model_len}), got {limit}")
    values["draft_tensor_parallel_size"] = values.get("draft_tensor_parallel_size") or 1
    return cfg.SpeculativeConfig(**{key: values.get(key) for key in SPECULATIVE_KEYS})


def _from_speculative_dict(spec: dict) -> dict:
    """vLLM's speculative_config keys -> SpeculativeConfig values, with vLLM's method inference and defaults."""
    compat.check_speculative_keys(spec, SPECULATIVE_KEYS)
    values = {key: spec.get(key) for key in SPECULATIVE_KEYS}
    method, model = values["method"], values["model"]
    if method is None and model is None:
        raise ValueError("speculative_config (--speculative-config) needs 'method' (supported: "
                         f"{list(cfg.SPECULATIVE_METHODS)}), e.g. {{\"method\": \"ngram\", \"num_speculative_tokens\": 4}}")
    if method is None:  # vLLM infers the method from the model: "ngram" / "[ngram]", else a draft model
        method = "ngram" if model in NGRAM_NAMES else "draft_model"
    method = "ngram" if method in NGRAM_NAMES else method
    if compat.speculative_method_not_yet(method):
        raise ValueError(f"{_config_key('method')}: {method!r} is not supported yet: only methods 'ngram' "
                         "and 'ngram_gpu' (prompt lookup) and 'draft_model' are implemented")
    if method not in cfg.SPECULATIVE_METHODS:
        raise ValueError(f"{_config_key('method')}: {method!r} is not a speculative method; supported: "
                         f"{list(cfg.SPECULATIVE_METHODS)}")
    if method == "draft_model":  # the model and the absence of lookup bounds are checked with the other values
        values["method"] = method
        return values
    if model not in (None, *NGRAM_NAMES):  # as vLLM: the n-gram methods read no model
        _warn_once(f"speculative_config: method {method!r} uses no draft model; model={model!r} is ignored")
    low, high = values["prompt_lookup_min"], values["prompt_lookup_max"]
    for key, value in (("prompt_lookup_min", low), ("prompt_lookup_max", high)):  # before one defaults to the other
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{_config_key(key)} must be >= 1, got {value!r}")
    if low is None and high is None:
        low = high = NGRAM_LOOKUP_DEFAULT
    values.update(method=method, model=None, prompt_lookup_min=high if low is None else low,
                  prompt_lookup_max=low if high is None else high)
    return values


def _from_legacy_flags(given: dict) -> dict | None:
    """vLLM 0.6's flags -> SpeculativeConfig values, with vLLM 0.6's rules (None: speculation stays off)."""
    model = given.get("speculative_model")
    if model is None:
        if "num_speculative_tokens" in given:
            raise ValueError("num_speculative_tokens (--num-speculative-tokens) was given without speculative_model "
                             "(--speculative-model); add --speculative-model '[ngram]' or a draft model folder, or use "
                             "--speculative-config")
        _warn_once(f"{_flags(given)} {'has' if len(given) == 1 else 'have'} no effect without --speculative-model "
                   "(as in vLLM 0.6)")
        return None
    values = {LEGACY_SPECULATIVE_FLAGS[name]: value for name, value in given.items()}
    if model not in NGRAM_NAMES:  # a draft model (vLLM 0.6): the lookup flags are an error, checked with the rest
        values.update(method="draft_model", model=model)
        return values
    if given.get("ngram_prompt_lookup_max") is None:
        raise ValueError("ngram_prompt_lookup_max (--ngram-prompt-lookup-max) is required with --speculative-model "
                         "'[ngram]' (as in vLLM 0.6), e.g. --ngram-prompt-lookup-max 4")
    values.update(method="ngram", model=None)
    values.setdefault("prompt_lookup_min", 1)  # vLLM 0.6's default
    return values


def option_namer(speculative_config: Any) -> Callable[[str], str]:
    """How messages name a SpeculativeConfig field: as the speculative_config key when that dict (or a
    SpeculativeConfig) was given, else as vLLM 0.6's flag."""
    return _config_key if speculative_config else _legacy_flag


def _config_key(key: str) -> str:
    return f"speculative_config[{key!r}] (--speculative-config)"


def _legacy_flag(key: str) -> str:
    name = next((n for n, k in LEGACY_SPECULATIVE_FLAGS.items() if k == key), "speculative_model")
    return f"{name} (--{name.replace('_', '-')})"


def _flags(names: Iterable[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)
