"""Validated configuration dataclasses, built from `EngineArgs` (the one table of options).

Invariants:
- Every config here is complete and validated once constructed: downstream code never re-checks
  user input, and never reads options from anywhere else.
- `core/` imports this module but needs nothing from torch; the torch dtype lives on ModelConfig
  as a string name (`dtype_name`) plus the resolved `torch.dtype` built lazily by `torch_dtype`.
- `PagodaConfig.speculative` is None unless speculative decoding was asked for; with method "ngram" the
  scheduler's `async_scheduling` is False (its drafts are looked up in host tokens), while the draft model
  (and the benchmark-only `oracle`) draft on the device and keep it, as does "ngram_gpu" (the same
  lookup on the device). The n-gram methods carry
  both prompt-lookup bounds and no model; method "draft_model" carries the draft's resolved folder, no
  prompt-lookup bounds, and (once built by `EngineArgs.create_config`) `draft_model_config`, a ModelConfig
  of the draft with the target's dtype and vocabulary size.
- `PagodaConfig.structured_outputs` is always set (StructuredOutputsConfig() when nothing was asked): its
  backend is one of STRUCTURED_OUTPUT_ENGINE_BACKENDS and its flags are booleans. `build_structured_outputs_config`
  makes it from vLLM's `structured_outputs_config` and its older `guided_decoding_*` flags (vLLM 0.8-0.9's
  "BACKEND:option,..." spelling included); a setting given two ways must agree.
- `CacheConfig.cache_dtype` is one of KV_CACHE_DTYPES (vLLM's kv_cache_dtype names): "auto" keeps the
  cache in the model's dtype; the FP8 names map to a torch dtype by KV_CACHE_FP8_DTYPES ("fp8" is e4m3,
  as vLLM on CUDA). `CacheConfig.torch_dtype(model_dtype)` is the one place that mapping is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pagoda.parallel_config import ParallelConfig  # PagodaConfig.parallel; importable from here as before

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "float16", "half", "bfloat16", "float32", "float")
LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
SCHEDULING_POLICIES = ("fcfs", "priority")
TOKENIZER_MODES = ("auto", "slow")
BLOCK_SIZES = (8, 16, 32, 64, 128)
TASK_CHOICES = ("auto", "generate", "embed")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
KV_CACHE_FP8_DTYPES = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
# vLLM's other kv_cache_dtype values, refused as not supported yet
KV_CACHE_DTYPES_NOT_YET = ("bfloat16", "fp8_inc", "fp8_ds_mla", "nvfp4")
GENERATION_CONFIG_MODES = ("auto", "vllm", "none")  # or a folder holding generation_config.json
# generation_config.json keys that become default SamplingParams (vLLM's list), and the values
# transformers writes by default, which vLLM's `to_diff_dict()` drops (so top_k=50 is not a default).
GENERATION_DEFAULT_KEYS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p", "max_new_tokens")
_HF_GENERATION_DEFAULTS = {"repetition_penalty": 1.0, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
SPECULATIVE_METHODS = ("ngram", "ngram_gpu", "draft_model")  # prompt lookup (on the host, on the device); a smaller model
NGRAM_METHODS = ("ngram", "ngram_gpu")


@dataclass
class ModelConfig:
    """What model runs and how its numbers are represented."""

    model: str  # the path or hub id the user gave
    model_path: str  # the local folder it resolved to
    tokenizer_path: str
    hf_config: Any  # hf_config_reader.PlainHFConfig, or a transformers PretrainedConfig (same attributes)
    architecture: str
    dtype_name: str  # "float16" | "bfloat16" | "float32"
    max_model_len: int
    seed: int | None
    served_model_name: str
    max_logprobs: int
    revision: str | None = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    generation_config: dict = field(default_factory=dict)  # the generation_config.json read ({} for "none")
    generation_config_mode: str = "auto"  # "auto" | "vllm" | "none" | a folder
    override_generation_config: dict = field(default_factory=dict)
    task: str = "generate"  # resolved: "generate" | "embed"
    pooler_config: Any = None  # a pooling_params.PoolerConfig when task == "embed"
    do_lower_case: bool = False  # sentence-transformers models that lowercase text before tokenizing
    limit_mm_per_prompt: dict = field(default_factory=dict)  # modality -> most items per prompt (absent: 999)
    allowed_local_media_path: str = ""  # the folder file:// image URLs may read ("" = none), resolved
    mm_processor_kwargs: dict = field(default_factory=dict)  # the processor's defaults (a request's keys win)
    # the resolved quantization method (vLLM's name, e.g. "fp8"; None: unquantized) and the checkpoint's
    # quantization config it reads (None: quantized at load time, or unquantized); see
    # model_executor/layers/quantization/resolve.py
    quantization: str | None = None
    quantization_config: dict | None = None

    @property
    def runner_type(self) -> str:
        """"pooling" for embedding models (one vector per prompt), else "generate"."""
        return "pooling" if self.task == "embed" else "generate"

    def get_diff_sampling_param(self) -> dict:
        """Default SamplingParams keywords from generation_config.json (vLLM's `--generation-config auto`).

        Only the keys of GENERATION_DEFAULT_KEYS whose values differ from transformers' defaults count;
        `max_new_tokens` becomes `max_tokens`. "vllm" and "none" take none of them;
        `override_generation_config` applies in every mode.
        """
        config = {}
        if self.generation_config_mode not in ("vllm", "none"):
            for key in GENERATION_DEFAULT_KEYS:
                value = self.generation_config.get(key)
                if value is not None and value != _HF_GENERATION_DEFAULTS.get(key):
                    config[key] = value
        config.update({k: v for k, v in self.override_generation_config.items() if k in GENERATION_DEFAULT_KEYS})
        if "max_new_tokens" in config:
            config["max_tokens"] = config.pop("max_new_tokens")
        return config

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def hf_text_config(self) -> Any:
        """The text model's config: hf_config itself, or its `text_config` for a vision-language model."""
        return text_config_of(self.hf_config)

    @property
    def vocab_size(self) -> int:
        return int(self.hf_text_config.vocab_size)


MM_MODALITIES = ("image",)
MM_DEFAULT_LIMIT = 999  # vLLM V1's default per modality


def parse_mm_limits(text: Any) -> dict:
    """--limit-mm-per-prompt: JSON ('{"image": 2}') or vLLM's older 'image=2,video=0'."""
    import json

    if isinstance(text, dict):
        return text
    text = str(text).strip()
    if text.startswith("{"):
        return json.loads(text)
    limits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"limit_mm_per_prompt: {item!r} is not MODALITY=N")
        limits[key.strip()] = int(value)
    return limits


def mm_limits_arg(text: str) -> Any:
    """The flag's value: a JSON object, else the text as given ('image=2'), which check_mm_limits reads."""
    import json

    return json.loads(text) if text.strip().startswith("{") else text


mm_limits_arg.json_like = True  # the server's parser also takes vLLM's dotted form, --limit-mm-per-prompt.image 2


def check_mm_processor_kwargs(kwargs: Any, architecture: str) -> dict:
    """The validated --mm-processor-kwargs: a dict, and only for a model that takes images."""
    from pagoda.model_executor.models.registry import accepts_images

    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"mm_processor_kwargs (--mm-processor-kwargs) must be a JSON object, got {kwargs!r}")
    if kwargs and not accepts_images(architecture):
        raise ValueError(f"mm_processor_kwargs (--mm-processor-kwargs): the model ({architecture}) takes no images, "
                         "so it has no multimodal processor")
    return dict(kwargs)


def check_mm_limits(limits: Any, architecture: str) -> dict:
    """The validated --limit-mm-per-prompt: counts >= 0; modalities other than image only at 0; a text-only
    model only with zeros (nothing silently ignored)."""
    from pagoda.model_executor.models.registry import accepts_images

    if isinstance(limits, str):
        limits = parse_mm_limits(limits)
    if not isinstance(limits, dict):
        raise ValueError(f"limit_mm_per_prompt (--limit-mm-per-prompt) must be a dict like {{'image': 2}}, got {limits!r}")
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"limit_mm_per_prompt[{key!r}] (--limit-mm-per-prompt) must be an integer >= 0, got {value!r}")
        if key not in MM_MODALITIES and value:
            raise ValueError(f"limit_mm_per_prompt[{key!r}] (--limit-mm-per-prompt): modality {key!r} is not supported yet (allowed: "
                             f"{list(MM_MODALITIES)}, or 0)")
        if key in MM_MODALITIES and value and not accepts_images(architecture):
            raise ValueError(f"limit_mm_per_prompt[{key!r}] (--limit-mm-per-prompt): the model ({architecture}) takes no images")
    return dict(limits)


def resolve_media_path(path: str | None) -> str:
    """--allowed-local-media-path resolved (symlinks included), or "" for none; ValueError unless a folder."""
    import os

    if not path:
        return ""
    if not os.path.isdir(path):
        raise ValueError(f"allowed_local_media_path (--allowed-local-media-path): {path!r} is not a folder")
    return os.path.realpath(path)


def text_config_of(hf_config: Any) -> Any:
    """A model config's text part: `text_config` of a vision-language config, else the config itself."""
    text = getattr(hf_config, "text_config", None)
    return text if text is not None else hf_config


@dataclass
class LoadConfig:
    load_format: str = "auto"


@dataclass
class CacheConfig:
    """The paged KV cache. `num_blocks` is filled in by the worker after it sizes the cache."""

    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    swap_space_gib: float = 4.0
    num_gpu_blocks_override: int | None = None
    kv_cache_memory_bytes: int | None = None
    enable_prefix_caching: bool = True
    num_blocks: int | None = None
    cache_dtype: str = "auto"  # vLLM's kv_cache_dtype: "auto" (the model's dtype) or an FP8 format

    def __post_init__(self) -> None:
        if self.cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {self.cache_dtype!r}")

    def torch_dtype(self, model_dtype):
        """The KV cache's torch dtype: model_dtype for "auto", else the FP8 dtype of cache_dtype."""
        import torch

        name = KV_CACHE_FP8_DTYPES.get(self.cache_dtype)
        return model_dtype if name is None else getattr(torch, name)


@dataclass
class SchedulerConfig:
    """The per-step token budget and the admission policy."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    policy: str = "fcfs"
    async_scheduling: bool = True  # launch step n+1 before step n's tokens reach the host


@dataclass
class DeviceConfig:
    device: str = "cpu"  # resolved: "cpu" or "cuda"




@dataclass
class SpeculativeConfig:
    """Speculative decoding: each step a running request may carry up to `num_speculative_tokens` drafts,
    verified in the same forward pass (vLLM's `speculative_config`; built by EngineArgs)."""

    method: str  # "ngram": drafts copied from the request's own earlier tokens; "draft_model": a smaller model's
    num_speculative_tokens: int  # most drafts per request per step, >= 1
    prompt_lookup_max: int | None = None  # ngram (required): the longest suffix looked up, >= prompt_lookup_min
    prompt_lookup_min: int | None = None  # ngram (required): the shortest suffix that counts as a match, >= 1
    model: str | None = None  # draft_model (required): the draft's folder (resolved by create_config); ngram: None
    disable_by_batch_size: int | None = None  # no drafts while this many requests (>= 2) or more are running
    max_model_len: int | None = None  # no drafts that would take a request past this many tokens
    draft_tensor_parallel_size: int = 1
    # draft_model: the draft's ModelConfig, set by EngineArgs.create_config (None before, and for ngram); derived
    # from `model`, so it takes no part in == and repr
    draft_model_config: Any = field(default=None, compare=False, repr=False)
    # Benchmark only (`pagoda bench latency --spec-oracle`): drafts replay a recorded run, on the device
    # (spec_decode/oracle_proposer.py); never set from user options.
    oracle: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_speculative_values(vars(self), str)


NGRAM_ONLY_KEYS = ("prompt_lookup_max", "prompt_lookup_min")


def check_speculative_values(values: Mapping[str, Any], name: Callable[[str], str]) -> None:
    """ValueError/TypeError for a SpeculativeConfig value that is missing, out of range or of the other method;
    `name(field)` is how a message names the field (EngineArgs passes the user's key or flag)."""
    method = values.get("method")
    if method not in SPECULATIVE_METHODS:
        raise ValueError(f"{name('method')}: {method!r} is not one of {list(SPECULATIVE_METHODS)}")
    required = ("num_speculative_tokens", *NGRAM_ONLY_KEYS) if method in NGRAM_METHODS else ("num_speculative_tokens",
                                                                                        "model")
    for key in required:
        if values.get(key) is None:
            raise ValueError(f"{name(key)} is required with method {method!r}")
    if method == "draft_model":
        for key in NGRAM_ONLY_KEYS:
            if values.get(key) is not None:
                raise ValueError(f"{name(key)} is an n-gram (prompt lookup) option; it does not apply to method "
                                 f"'draft_model' (a draft model {values['model']!r} was given)")
        if not isinstance(values["model"], str) or not values["model"] or values["model"] in ("ngram", "[ngram]"):
            raise ValueError(f"{name('model')}: method 'draft_model' needs a draft model folder or cached hub id, "
                             f"got {values['model']!r}")
    for key, low in (("num_speculative_tokens", 1), ("prompt_lookup_max", 1), ("prompt_lookup_min", 1),
                     ("disable_by_batch_size", 2), ("max_model_len", 1), ("draft_tensor_parallel_size", 1)):
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name(key)} must be an integer, got {value!r}")
        if value < low:
            raise ValueError(f"{name(key)} must be >= {low}, got {value}")
    if method in NGRAM_METHODS and values["prompt_lookup_min"] > values["prompt_lookup_max"]:
        raise ValueError(f"{name('prompt_lookup_min')} must be <= {name('prompt_lookup_max')}, got "
                         f"{values['prompt_lookup_min']} > {values['prompt_lookup_max']}")
    if values.get("draft_tensor_parallel_size") not in (None, 1):
        raise ValueError(f"{name('draft_tensor_parallel_size')}: {values['draft_tensor_parallel_size']} is not "
                         "supported yet: parallelism comes in a later issue (allowed: 1)")


STRUCTURED_OUTPUT_ENGINE_BACKENDS = ("auto", "xgrammar", "guidance", "outlines")
# vLLM 0.8-0.9's "backend:option,option" spelling (--guided-decoding-backend, and a request's guided_decoding_backend).
STRUCTURED_BACKEND_OPTIONS = {"no-fallback": "disable_fallback", "disable-any-whitespace": "disable_any_whitespace",
                              "no-additional-properties": "disable_additional_properties"}
# vLLM 0.8-0.11's flags of structured_outputs_config (--guided-decoding-*) -> the config field each sets.
LEGACY_STRUCTURED_FLAGS = {"guided_decoding_backend": "backend",
                           "guided_decoding_disable_fallback": "disable_fallback",
                           "guided_decoding_disable_any_whitespace": "disable_any_whitespace",
                           "guided_decoding_disable_additional_properties": "disable_additional_properties"}
# vLLM's structured_outputs_config keys Pagoda does not implement -> the values it honours (vLLM's default first).
STRUCTURED_OUTPUTS_CONFIG_NOT_YET: dict[str, tuple] = {"reasoning_parser_plugin": ("",)}
# Reasoning parsers whose end of reasoning the engine can see in token ids: name -> (start, end) marker tokens. The
# grammar of a request waits for the end marker (the last of the two in prompt + output decides) unless
# enable_in_reasoning. The server's --reasoning-parser sets reasoning_parser when it names one of these.
REASONING_MARKER_TOKENS = {"deepseek_r1": ("<think>", "</think>"), "qwen3": ("<think>", "</think>")}


@dataclass
class StructuredOutputsConfig:
    """How requests' output constraints are compiled (vLLM's `structured_outputs_config`; the
    `guided_decoding_*` flags of vLLM < 0.12). A request's own StructuredOutputsParams.backend and
    flags win over these."""

    backend: str = "auto"  # "auto": xgrammar, falling back to guidance for what xgrammar cannot compile
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    reasoning_parser: str = ""  # one of REASONING_MARKER_TOKENS: grammars start after the end of reasoning
    enable_in_reasoning: bool = False  # True: grammars constrain the reasoning too
    # (start, end) marker tokens of the reasoning; set from reasoning_parser (or given, e.g. by a test)
    reasoning_markers: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.reasoning_parser:
            if self.reasoning_parser not in REASONING_MARKER_TOKENS:
                raise ValueError(f"structured outputs reasoning_parser must be one of {list(REASONING_MARKER_TOKENS)} "
                                 f"(parsers whose end of reasoning is one token), got {self.reasoning_parser!r}")
            if self.reasoning_markers is None:
                self.reasoning_markers = REASONING_MARKER_TOKENS[self.reasoning_parser]
        if self.reasoning_markers is not None:
            self.reasoning_markers = tuple(self.reasoning_markers)
            if len(self.reasoning_markers) != 2 or not all(isinstance(m, str) and m for m in self.reasoning_markers):
                raise ValueError(f"structured outputs reasoning_markers must be two marker tokens (start, end), "
                                 f"got {self.reasoning_markers!r}")
        if self.backend == "lm-format-enforcer":
            raise ValueError("structured output backend 'lm-format-enforcer' is not supported (it does not import "
                             f"with transformers 5); allowed: {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)}")
        if self.backend not in STRUCTURED_OUTPUT_ENGINE_BACKENDS:
            raise ValueError(f"structured output backend must be one of {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)}, "
                             f"got {self.backend!r}")
        for name in ("disable_fallback", "disable_any_whitespace", "disable_additional_properties"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"structured outputs {name} must be true or false, got {getattr(self, name)!r}")


def split_backend_options(value: Any, name: str) -> tuple[str, dict[str, bool]]:
    """('xgrammar', {}) for 'xgrammar'; vLLM 0.8-0.9's 'xgrammar:no-fallback,disable-any-whitespace' gives
    ('xgrammar', {'disable_fallback': True, 'disable_any_whitespace': True}). TypeError / ValueError naming `name`."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string (a backend name), got {type(value).__name__}")
    backend, colon, options = value.partition(":")
    flags: dict[str, bool] = {}
    for option in (o.strip() for o in options.split(",")) if colon else ():
        if option not in STRUCTURED_BACKEND_OPTIONS:
            raise ValueError(f"{name}: unknown backend option {option!r} in {value!r}; allowed after 'BACKEND:' "
                             f"(comma-separated): {list(STRUCTURED_BACKEND_OPTIONS)}")
        flags[STRUCTURED_BACKEND_OPTIONS[option]] = True
    return backend.strip(), flags


def build_structured_outputs_config(given: Any, legacy: Mapping[str, Any]) -> StructuredOutputsConfig:
    """The StructuredOutputsConfig of `structured_outputs_config` (None, a dict with vLLM's keys, or a
    StructuredOutputsConfig) and vLLM's older flags (`legacy`: LEGACY_STRUCTURED_FLAGS' names -> values, None
    or False meaning not given). A setting given both ways must agree; errors name the keyword and the flag."""
    flag = "structured_outputs_config (--structured-outputs-config)"
    known = list(StructuredOutputsConfig.__dataclass_fields__)
    if isinstance(given, StructuredOutputsConfig):
        given = {name: getattr(given, name) for name in known}
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise TypeError(f"{flag} must be a JSON object (dict) with keys {known}, got {type(given).__name__}")
    unknown = [key for key in given if key not in known and key not in STRUCTURED_OUTPUTS_CONFIG_NOT_YET]
    if unknown:
        raise ValueError(f"{flag} has unknown key(s) {unknown}; allowed keys: "
                         f"{known + list(STRUCTURED_OUTPUTS_CONFIG_NOT_YET)}")
    for key, allowed in STRUCTURED_OUTPUTS_CONFIG_NOT_YET.items():
        if key in given and not any(given[key] == ok and type(given[key]) is type(ok) for ok in allowed):
            raise ValueError(f"{flag} key {key!r}={given[key]!r} is not supported yet; allowed: "
                             f"{' or '.join(map(repr, allowed))}")
    values: dict[str, tuple[Any, str]] = {}  # config field -> (value, where it was given)
    for key in known:
        if key in given:
            _set(values, key, given[key], f"{flag} key {key!r}")
    for name, key in LEGACY_STRUCTURED_FLAGS.items():
        value = legacy.get(name)
        if value is not None and value is not False:
            _set(values, key, value, f"{name} (--{name.replace('_', '-')})")
    for key, (value, where) in values.items():
        if key == "reasoning_parser" and value and value not in REASONING_MARKER_TOKENS:
            raise ValueError(f"{where} must be one of {list(REASONING_MARKER_TOKENS)} (the parsers whose end of "
                             f"reasoning is one token, which structured output waits for), got {value!r}")
        if key not in ("backend", "reasoning_parser", "reasoning_markers") and not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false, got {value!r}")
    return StructuredOutputsConfig(**{key: value for key, (value, _) in values.items()})


def _set(values: dict[str, tuple[Any, str]], key: str, value: Any, where: str) -> None:
    """values[key] = (value, where), the backend's ':options' spread to their own keys; a ValueError naming both
    places when the key already holds a different value, and one naming `where` for a bad backend."""
    if key == "backend":
        value, options = split_backend_options(value, where)
        for option, on in options.items():
            _set(values, option, on, f"{where} (option of {value!r})")
        if value == "lm-format-enforcer":
            raise ValueError(f"{where}: backend 'lm-format-enforcer' is not supported: it does not import with "
                             f"transformers 5; allowed: {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)}")
        if value not in STRUCTURED_OUTPUT_ENGINE_BACKENDS:
            raise ValueError(f"{where}: backend must be one of {list(STRUCTURED_OUTPUT_ENGINE_BACKENDS)}, got "
                             f"{value!r}")
    if key in values and values[key][0] != value:
        old, old_where = values[key]
        raise ValueError(f"{where} sets {key}={value!r} but {old_where} sets {old!r}: they are two spellings of one "
                         "setting; give one (or the same value)")
    values[key] = (value, where)


@dataclass
class PagodaConfig:
    """Everything the engine needs, grouped."""

    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    device: DeviceConfig
    load: LoadConfig
    parallel: ParallelConfig
    enforce_eager: bool = False
    disable_cascade_attn: bool = False  # vLLM's flag: no cascade attention (attention/cascade.py)
    max_cudagraph_capture_size: int = 512  # decode batches up to this size replay CUDA graphs
    speculative: SpeculativeConfig | None = None  # speculative decoding, when asked for
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)
