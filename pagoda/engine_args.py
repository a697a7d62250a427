"""EngineArgs: the single declaration of every engine option.

Each option is one dataclass field with vLLM's name and default; its `help` (and `choices`) metadata
become the `--kebab-case` CLI flag, the same field is the `LLM(...)` keyword, and `create_config()`
validates everything once and builds the config dataclasses in `pagoda.config`. The vLLM options Pagoda
does not implement (yet) are fields too, inherited from `engine_args_compat.VllmCompatArgs`, where each
is declared once with its kind ("not supported yet" or "no effect").

Invariants:
- An option is declared here or in engine_args_compat and nowhere else; the CLI and `LLM` never list
  options themselves. Field metadata drives the flag: `flags` (vLLM's short aliases), `cli_kind` /
  `cli_type` (the value parser), `choices`, `not_yet_values` (vLLM values refused as not supported yet)
  and `aliases` (vLLM spellings of a Pagoda value).
- `create_config()` raises ValueError naming the field and the allowed values for any bad input; a "no
  effect" option given a non-default value is logged once, when the EngineArgs is built.
- Speculative decoding is asked for one way or the other: vLLM's `speculative_config` dict or vLLM 0.6's
  flags (LEGACY_SPECULATIVE_FLAGS), never both; `build_speculative_config` (spec_decode/args.py) turns either into a
  `config.SpeculativeConfig` (None when off) without a model folder, and with one `create_config()` turns
  async scheduling off for method "ngram" (its lookup reads host tokens; the draft model drafts on the device
  and keeps it). For method "draft_model" `create_config()` also builds the draft's ModelConfig with the
  target's machinery (`_model_config` of a copy of these arguments: offline folder / cache resolution, the
  target's resolved dtype) and checks it: a generative model Pagoda runs, the target's vocabulary size, and a
  max_model_len within the draft's own position limit (SpeculativeConfig.max_model_len is lowered to that limit
  when it is below the target's, so that no draft is asked past it).
- Quantization: `quantization` (vLLM's names; None detects the checkpoint's) is checked by name in
  `check_options` and reconciled with the checkpoint in `_model_config`
  (model_executor/layers/quantization/resolve.py); the ModelConfig carries the resolved method and the
  checkpoint's quantization config. A draft model detects its own.
- `kv_cache_dtype` (vLLM's names; "fp8" = "fp8_e4m3") becomes CacheConfig.cache_dtype; the worker allocates
  the cache in that dtype and sets each attention layer's k_scale / v_scale from the checkpoint.
- Structured output is configured by vLLM's `structured_outputs_config` dict (or a StructuredOutputsConfig) and
  vLLM 0.8-0.11's `guided_decoding_*` flags, which may be mixed but must agree (a setting given both ways with
  different values is a ValueError naming both); `create_structured_outputs_config` builds the one
  `PagodaConfig.structured_outputs` (config.build_structured_outputs_config), checked by `check_options` too.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from pagoda import config as cfg
from pagoda import engine_args_compat as compat
from pagoda.spec_decode.args import LEGACY_SPECULATIVE_FLAGS, SPECULATIVE_KEYS, build_speculative_config
from pagoda.spec_decode.draft_config import with_draft_model
from pagoda import hf_utils
from pagoda.pooling_params import (
    PoolerConfig,
    read_sentence_transformers_lowercase,
    read_sentence_transformers_max_len,
    resolve_pooler_config,
)

logger = logging.getLogger(__name__)


USAGE_CONTEXTS = ("llm", "server")
RUNNERS = ("auto", "generate", "pooling")  # vLLM's --runner; "pooling" is Pagoda's task "embed"
CONVERTS = ("auto", "none", "embed")  # vLLM's --convert
VLLM_LOAD_FORMATS = ("npcache", "tensorizer", "sharded_state", "gguf", "bitsandbytes", "mistral", "runai_streamer",
                     "runai_streamer_sharded", "fastsafetensors")
LOAD_FORMATS_REASON = "only safetensors / PyTorch .bin weights are read (quantized formats come with quantization)"
VLLM_TOKENIZER_MODES = ("mistral", "deepseek_v32", "qwen_vl", "custom")
BIG_GPU_BYTES = 70 << 30  # vLLM's threshold for its larger batch defaults (H100/H200 class)


def _big_gpu(device: str) -> bool:
    """Whether the engine runs on a CUDA GPU (device resolved) with at least BIG_GPU_BYTES of memory."""
    import torch

    if device != "cuda":
        return False
    return torch.cuda.get_device_properties(0).total_memory >= BIG_GPU_BYTES


def _opt(default: Any, help: str, choices: tuple | None = None, **extra: Any) -> Any:
    """A field whose metadata makes its flag: help, choices, and the extras listed in the module docstring."""
    metadata = {"help": help, "choices": choices, **extra}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class EngineArgs(compat.VllmCompatArgs):
    """Every engine option, with vLLM's names and defaults (the unimplemented ones inherited)."""

    model: str = _opt("", "Model folder, or a hub id already in the local Hugging Face cache.")
    tokenizer: str | None = _opt(None, "Tokenizer folder or hub id; defaults to the model's.")
    revision: str | None = _opt(None, "Revision of the model in the Hugging Face cache.")
    tokenizer_revision: str | None = _opt(None, "Revision of the tokenizer in the Hugging Face cache; defaults to --revision.")
    download_dir: str | None = _opt(None, "The Hugging Face cache folder a hub id is looked up in (offline; default: HF_HUB_CACHE or ~/.cache/huggingface/hub); s3:// models are downloaded under DIR/pagoda-s3.")
    tokenizer_mode: str = _opt("auto", "'auto' (or vLLM's 'hf') uses the fast tokenizer; 'slow' the Python one.", cfg.TOKENIZER_MODES,
                               aliases={"hf": "auto"}, not_yet_values=VLLM_TOKENIZER_MODES,
                               not_yet_reason="only Hugging Face tokenizers are loaded")
    skip_tokenizer_init: bool = _opt(False, "Do not load a tokenizer; prompts must be token ids and outputs are ids only.")
    trust_remote_code: bool = _opt(False, "Allow custom code from the model folder (configs and tokenizers).")
    quantization: str | None = _opt(None, "Method used to quantize the weights (vLLM's names; implemented: fp8). Unset: the checkpoint's quantization_config (config.json) or quantize_config.json decides, and a checkpoint without one is unquantized; set: it must match the checkpoint's method, and 'fp8' on an unquantized checkpoint quantizes its weights at load time (per tensor; activations per token).",
                                    flags=("-q",))
    tensor_parallel_size: int = _opt(1, "Number of tensor-parallel ranks: attention heads, MLP and vocabulary split over this many processes (one GPU each on CUDA, gloo on CPU).", flags=("-tp",))
    pipeline_parallel_size: int = _opt(1, "Number of pipeline stages: the decoder layers split over this many groups of tensor_parallel_size ranks (uneven splits allowed; PAGODA_PP_LAYER_PARTITION or VLLM_PP_LAYER_PARTITION, e.g. '5,3', sets the layers per stage).", flags=("-pp",))
    distributed_executor_backend: str | None = _opt(None, "How ranks run: 'mp' (one process per rank on this node; the default when tensor_parallel_size x pipeline_parallel_size > 1), 'ray' (one Ray actor per rank, on this node or an existing Ray cluster: RAY_ADDRESS) or 'uni' (one worker in the engine-core process; the default otherwise). 'external_launcher' is not supported yet.")
    dtype: str = _opt("auto", "Weight and activation dtype; 'auto' takes the checkpoint's (float32 checkpoints: bfloat16 on GPU, float32 on CPU).", cfg.DTYPE_CHOICES)
    seed: int | None = _opt(0, "Seed for random sampling of requests that give no seed of their own.")
    max_model_len: int | None = _opt(None, "Longest prompt plus output, in tokens (4096, 32k, 32K); defaults to the model's limit (also -1 or 'auto').",
                                     cli_type=compat.human_readable_int_or_auto)
    hf_overrides: dict = _opt({}, "JSON dict of attributes set on the Hugging Face config, e.g. '{\"architectures\": [\"LlamaForCausalLM\"]}'.", json_arg=True)
    rope_scaling: dict = _opt({}, "JSON dict replacing the model's rope scaling, e.g. '{\"rope_type\": \"linear\", \"factor\": 2.0}' (rope types default, linear, llama3).", json_arg=True)
    rope_theta: float | None = _opt(None, "Rope base frequency, overriding the model's.")
    load_format: str = _opt("auto", "How weights are read: 'auto' (safetensors, else .bin), 'safetensors', 'pt', or 'dummy' (random weights).", cfg.LOAD_FORMATS,
                            not_yet_values=VLLM_LOAD_FORMATS, not_yet_reason=LOAD_FORMATS_REASON)
    served_model_name: str | None = _opt(None, "The model name in API responses; defaults to --model.")
    device: str = _opt("auto", "Where the model runs; 'auto' picks cuda when a GPU is visible.", cfg.DEVICE_CHOICES)
    block_size: int = _opt(16, "Tokens per KV-cache block.", cfg.BLOCK_SIZES)
    kv_cache_dtype: str = _opt("auto", "KV-cache storage: 'auto' keeps the model's dtype; 'fp8' (= 'fp8_e4m3', float8_e4m3fn, as vLLM on CUDA) or 'fp8_e5m2' stores keys and values in 8 bits, twice the tokens in the same memory, divided by the layer's k_scale / v_scale from the checkpoint (self_attn.k_scale / v_scale, kv_scale, k_proj.output_scale; 1.0 when it has none).", cfg.KV_CACHE_DTYPES,
                               not_yet_values=cfg.KV_CACHE_DTYPES_NOT_YET, not_yet_reason="the KV cache is kept in the model's dtype or in FP8 (e4m3, e5m2)")
    gpu_memory_utilization: float = _opt(0.9, "Share of GPU memory (0, 1] the engine may use: weights, activations and KV cache.")
    num_gpu_blocks_override: int | None = _opt(None, "Use exactly this many KV-cache blocks (tests and experiments).")
    kv_cache_memory_bytes: int | None = _opt(None, "KV-cache size in bytes (also 4G, 4096M); on a GPU it replaces the gpu_memory_utilization sizing (as vLLM); on CPU it defaults to 4 GiB.",
                                             cli_type=compat.human_readable_int)
    enable_prefix_caching: bool = _opt(True, "Reuse the KV cache of identical prompt prefixes.", negatable=True)
    max_num_seqs: int | None = _opt(None, "Most requests in one step; defaults to 1024 on a GPU with at least 70 GiB (H100/H200 class), else 256, as vLLM does.")
    max_num_batched_tokens: int | None = _opt(None, "Most tokens in one step (8192, 8k); with chunked prefill it defaults to 16384 for `LLM` and 8192 for `pagoda serve` on a GPU with at least 70 GiB, else 8192; without it max(max_model_len, 8192).",
                                              cli_type=compat.human_readable_int)
    enable_chunked_prefill: bool = _opt(True, "Split long prompts over several steps so decodes keep running.", negatable=True)
    scheduling_policy: str = _opt("fcfs", "Which waiting request goes first: arrival order, or lowest `priority` value.", cfg.SCHEDULING_POLICIES)
    mm_processor_kwargs: dict | None = _opt(None, "JSON dict of keyword arguments for a vision-language model's Hugging Face processor, e.g. '{\"num_crops\": 4}' (vLLM's flag); a request's own mm_processor_kwargs override them key by key.", json_arg=True)
    limit_mm_per_prompt: dict = _opt({}, "Most items per prompt of each modality for a vision-language model, as JSON '{\"image\": 2}' or 'image=2' (vLLM's forms; default 999 each, as vLLM V1); modalities other than image only at 0.", json_arg=True, cli_type=cfg.mm_limits_arg)
    allowed_local_media_path: str = _opt("", "A folder whose images chat requests may name with file:// URLs (no path outside it, symlinks resolved; a security risk, for trusted setups only). None by default.")
    max_logprobs: int = _opt(20, "Most logprobs a request may ask for (logprobs and prompt_logprobs).")
    enforce_eager: bool = _opt(False, "Never capture CUDA graphs.")
    disable_cascade_attn: bool = _opt(False, "Never run cascade attention (one pass over the blocks every request of a step shares, then each request's own; chosen per step by a cost model, as vLLM).")
    max_cudagraph_capture_size: int | None = _opt(None, "Largest decode batch run from a CUDA graph (larger batches run eagerly); defaults to max_num_seqs for `LLM` (offline throughput gains most from graphs at large batches) and min(max_num_seqs, 512) for `pagoda serve`, as vLLM, to keep start-up short.")
    async_scheduling: bool = _opt(True, "Schedule and prepare step n+1 while step n runs on the device (outputs are identical either way).", negatable=True)
    task: str = _opt("auto", "What the model does: 'generate' text, or 'embed' prompts into vectors; 'auto' picks from the architecture (BertModel, *Model: embed).", cfg.TASK_CHOICES,
                     aliases={"embedding": "embed"}, not_yet_values=("classify", "score", "reward", "transcription"),
                     not_yet_reason="only generation and embedding models run")
    runner: str = _opt("auto", "vLLM's spelling of --task: 'generate', or 'pooling' (= task 'embed').", RUNNERS,
                       not_yet_values=("draft",), not_yet_reason="a draft model is given with speculative_config's 'model' (--speculative-config) or --speculative-model, next to the served model")
    convert: str = _opt("auto", "vLLM's model adapter: 'embed' runs a generative checkpoint as an embedding model (= task 'embed').", CONVERTS,
                        not_yet_values=("classify", "reward"), not_yet_reason="only the embedding adapter exists")
    generation_config: str = _opt("auto", "Where default sampling settings come from: 'auto' reads the model's generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, EOS ids), a folder reads that folder's, 'vllm' uses only its EOS ids, 'none' ignores it.")
    override_generation_config: dict = _opt({}, "JSON dict of default sampling settings over the generation config, e.g. '{\"temperature\": 0.5}'.", json_arg=True)
    usage_context: str = _opt("llm", "Who drives the engine: the offline `LLM` class or `pagoda serve` (set by the server, not a flag); picks the step-budget default.", USAGE_CONTEXTS, cli=False)
    override_pooler_config: dict = _opt({}, "JSON dict over an embedding model's pooling: '{\"pooling_type\": \"MEAN\", \"normalize\": false}' (pooling_type LAST, CLS or MEAN).", json_arg=True)
    pooler_config: dict = _opt({}, "vLLM's newer name of --override-pooler-config (the same JSON dict).", json_arg=True)
    # speculative decoding: vLLM's speculative_config, or (one or the other) vLLM 0.6's flags
    speculative_config: dict | None = _opt(None, "JSON dict of speculative decoding with vLLM's keys, e.g. '{\"method\": \"ngram\", \"num_speculative_tokens\": 4, \"prompt_lookup_max\": 4}' or, with a draft model (a smaller model of the same vocabulary), '{\"model\": \"/models/draft\", \"num_speculative_tokens\": 4}'; keys: " + ", ".join(SPECULATIVE_KEYS) + "; methods: ngram, ngram_gpu (the same lookup on the device, keeping async scheduling on), draft_model (the default when 'model' is a folder or hub id); the n-gram lookup bounds default to 5, or to each other when one is given. Method ngram turns async scheduling off (its drafts come from host tokens).", json_arg=True)
    speculative_model: str | None = _opt(None, "vLLM 0.6's spelling: '[ngram]' turns on n-gram speculative decoding (with --num-speculative-tokens and --ngram-prompt-lookup-max); a model folder or cached hub id is a draft model of the same vocabulary (with --num-speculative-tokens).")
    num_speculative_tokens: int | None = _opt(None, "vLLM 0.6's spelling: most draft tokens per request per step (with --speculative-model).")
    ngram_prompt_lookup_max: int | None = _opt(None, "vLLM 0.6's spelling: the longest n-gram looked up (required with --speculative-model [ngram]; an error with a draft model).")
    ngram_prompt_lookup_min: int | None = _opt(None, "vLLM 0.6's spelling: the shortest n-gram looked up (default 1; an error with a draft model).")
    speculative_disable_by_batch_size: int | None = _opt(None, "vLLM 0.6's spelling: no drafts while this many requests (>= 2) or more are running.")
    speculative_max_model_len: int | None = _opt(None, "vLLM 0.6's spelling: no drafts that would take a request past this length (at most --max-model-len; a draft model's own limit lowers it).")
    speculative_draft_tensor_parallel_size: int | None = _opt(None, "vLLM 0.6's spelling: the draft model's tensor parallel size (only 1).", flags=("-spec-draft-tp",))
    # structured output: vLLM's structured_outputs_config, or (agreeing with it) vLLM 0.8-0.11's guided_decoding_* flags
    structured_outputs_config: Any = _opt(None, "JSON dict of how requests' output constraints (JSON schema, regex, choice, grammar, structural tag) are compiled, with vLLM's keys: backend ('auto' (default): xgrammar, falling back to guidance for what xgrammar cannot compile; 'xgrammar', 'guidance', 'outlines'), disable_fallback, disable_any_whitespace, disable_additional_properties, enable_in_reasoning (either value: constraints cover every generated token); e.g. '{\"backend\": \"guidance\"}'. `LLM` also takes a StructuredOutputsConfig.", json_arg=True)
    guided_decoding_backend: str | None = _opt(None, "vLLM 0.8-0.11's spelling of structured_outputs_config's backend: auto, xgrammar, guidance or outlines, with vLLM 0.8-0.9's options after a colon: 'xgrammar:no-fallback,disable-any-whitespace,no-additional-properties'.")
    guided_decoding_disable_fallback: bool = _opt(False, "vLLM 0.9-0.11's spelling of structured_outputs_config's disable_fallback: a constraint the chosen backend cannot compile fails its request instead of falling back to another backend.")
    guided_decoding_disable_any_whitespace: bool = _opt(False, "vLLM 0.9-0.11's spelling of structured_outputs_config's disable_any_whitespace: JSON output has no whitespace between its tokens.")
    guided_decoding_disable_additional_properties: bool = _opt(False, "vLLM 0.9-0.11's spelling of structured_outputs_config's disable_additional_properties: the guidance backend reads a JSON schema without additionalProperties as closing the object, as xgrammar and outlines do.")

    def __post_init__(self) -> None:
        compat.log_no_effect(vars(self), compat.ENGINE_OPTIONS)

    # ---- construction from the two front doors -------------------------------------------
    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineArgs":
        """Build from `LLM(...)` keywords; an unknown keyword is a TypeError naming a close match."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in kwargs:
            if key not in names:
                close = compat.closest_name(key, names)
                hint = f" Did you mean {close!r}?" if close else ""
                raise TypeError(f"Unknown engine argument {key!r}.{hint}")
        return cls(**kwargs)

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        """Add one `--kebab-case` flag per field (plus vLLM's short aliases); unimplemented ones in their own group."""
        group = parser.add_argument_group("engine arguments")
        later = parser.add_argument_group(
            "vLLM engine arguments Pagoda accepts without implementing them",
            "Their defaults are fine; other values stop with 'not supported yet', or are logged as having no effect.")
        for f in dataclasses.fields(cls):
            if f.name in skip or f.metadata.get("cli") is False:
                continue
            flags = ("--" + f.name.replace("_", "-"), *f.metadata.get("flags", ()))
            (later if compat.compat_of(f) else group).add_argument(*flags, **_cli_kwargs(f))

    @classmethod
    def from_cli_args(cls, namespace: argparse.Namespace) -> "EngineArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in names})

    def check_options(self) -> None:
        """Every check that needs no model folder (choices, ranges, types, not-supported-yet options)."""
        self._check_choices()
        self.create_speculative_config()
        self.create_structured_outputs_config()

    def create_speculative_config(self, max_model_len: int | None = None) -> cfg.SpeculativeConfig | None:
        """The SpeculativeConfig these arguments ask for, None when speculation is off (no model folder needed;
        `max_model_len`, the target's when known, bounds the speculative one)."""
        legacy = {name: getattr(self, name) for name in LEGACY_SPECULATIVE_FLAGS}
        return build_speculative_config(self.speculative_config, legacy, max_model_len)

    def create_structured_outputs_config(self) -> cfg.StructuredOutputsConfig:
        """structured_outputs_config and the guided_decoding_* flags as one StructuredOutputsConfig."""
        legacy = {name: getattr(self, name) for name in cfg.LEGACY_STRUCTURED_FLAGS}
        return cfg.build_structured_outputs_config(self.structured_outputs_config, legacy)

    # ---- validation and config building ----------------------------------------------------
    def create_config(self) -> cfg.PagodaConfig:
        self._check_choices()
        device = self._resolve_device()
        model_config = self._model_config(device)
        max_len = model_config.max_model_len
        cache = cfg.CacheConfig(
            block_size=self.block_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            swap_space_gib=self.swap_space,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            enable_prefix_caching=self.enable_prefix_caching,
            cache_dtype=self.kv_cache_dtype,
        )
        big_gpu = _big_gpu(device)
        max_num_seqs = self.max_num_seqs if self.max_num_seqs is not None else (1024 if big_gpu else 256)
        batched = self.max_num_batched_tokens
        pooling = model_config.runner_type == "pooling"
        if batched is None and self.enable_chunked_prefill and not pooling:
            batched = 16384 if big_gpu and self.usage_context == "llm" else 8192
        elif batched is None:
            batched = max(max_len, 8192)
        if batched < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {batched}")
        if pooling and batched < max_len:
            raise ValueError(
                f"max_num_batched_tokens ({batched}) is smaller than max_model_len ({max_len}); an embedding "
                "model runs each prompt whole in one step"
            )
        if not self.enable_chunked_prefill and batched < max_len:
            raise ValueError(
                f"max_num_batched_tokens ({batched}) is smaller than max_model_len ({max_len}); "
                "without chunked prefill a whole prompt must fit in one step"
            )
        from pagoda.model_executor.parallel_state import check_parallel

        world_size = check_parallel(model_config, self.tensor_parallel_size, self.pipeline_parallel_size,
                                    self.distributed_executor_backend, device)
        speculative = self.create_speculative_config(max_len)
        if speculative is not None and world_size > 1:
            raise ValueError("speculative decoding (--speculative-config, --speculative-model) with "
                             f"tensor_parallel_size={self.tensor_parallel_size} x pipeline_parallel_size="
                             f"{self.pipeline_parallel_size} is not supported yet")
        if speculative is not None and pooling:
            raise ValueError("speculative decoding (--speculative-config, --speculative-model) is not supported for "
                             "pooling (embedding) models")
        if speculative is not None:
            from pagoda.model_executor.models.registry import accepts_images

            if accepts_images(model_config.architecture):
                raise ValueError("speculative decoding (--speculative-config, --speculative-model) is not supported "
                                 f"yet for vision-language models ({model_config.architecture})")
        if speculative is not None and speculative.method == "draft_model":
            speculative = with_draft_model(self, speculative, model_config, device)
        async_scheduling = self.async_scheduling
        if speculative is not None and speculative.method == "ngram" and async_scheduling:
            logger.info("async scheduling is off: the n-gram proposer drafts from the tokens on the host, which "
                        "each step then waits for")
            async_scheduling = False
        scheduler = cfg.SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=batched,
            max_model_len=max_len,
            enable_chunked_prefill=self.enable_chunked_prefill,
            policy=self.scheduling_policy,
            async_scheduling=async_scheduling,
        )
        return cfg.PagodaConfig(
            model=model_config,
            cache=cache,
            scheduler=scheduler,
            device=cfg.DeviceConfig(device=device),
            load=cfg.LoadConfig(load_format=self.load_format),
            parallel=self._parallel_config(),
            enforce_eager=self.enforce_eager,
            disable_cascade_attn=self.disable_cascade_attn,
            max_cudagraph_capture_size=min(self.max_cudagraph_capture_size
                                           or (max_num_seqs if self.usage_context == "llm" else 512), max_num_seqs),
            speculative=speculative,
            structured_outputs=self.create_structured_outputs_config(),
        )

    def _check_choices(self) -> None:
        for f in dataclasses.fields(self):
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            if not choices or value in choices or (isinstance(value, str) and value in f.metadata.get("aliases", {})):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, str) and value in f.metadata.get("not_yet_values", ()):
                raise ValueError(f"{f.name}={value!r} ({flag}) is not supported yet: {f.metadata['not_yet_reason']} "
                                 f"(supported: {list(choices)})")
            raise ValueError(f"{f.name}={value!r} is not one of {list(choices)}")
        if not self.model:
            raise ValueError("model is required: a model folder or a cached hub id")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_cudagraph_capture_size is not None and self.max_cudagraph_capture_size < 1:
            raise ValueError(f"max_cudagraph_capture_size must be >= 1, got {self.max_cudagraph_capture_size}")
        for name, low in (("max_num_seqs", 1), ("max_logprobs", 0), ("tensor_parallel_size", 1), ("pipeline_parallel_size", 1)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError(f"num_gpu_blocks_override must be >= 1, got {self.num_gpu_blocks_override}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 1:
            raise ValueError(f"kv_cache_memory_bytes must be >= 1, got {self.kv_cache_memory_bytes}")
        for name in ("hf_overrides", "override_generation_config", "override_pooler_config", "pooler_config",
                     "rope_scaling"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        if self.override_pooler_config and self.pooler_config and self.override_pooler_config != self.pooler_config:
            raise ValueError("pooler_config and override_pooler_config are two names of one option; give one")
        compat.check(vars(self), compat.ENGINE_OPTIONS)
        if isinstance(self.tensor_parallel_size, bool) or not isinstance(self.tensor_parallel_size, int):
            raise TypeError(f"tensor_parallel_size (-tp) must be an integer, got {self.tensor_parallel_size!r}")
        self._parallel_config()
        from pagoda.model_executor.layers.quantization import check_quantization_name

        check_quantization_name(self.quantization)

    def _parallel_config(self) -> cfg.ParallelConfig:
        return cfg.ParallelConfig(self.tensor_parallel_size, self.pipeline_parallel_size,
                                  self.distributed_executor_backend)

    def _resolve_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA GPU is visible; use device='cpu' or 'auto'")
        return self.device

    def _model_config(self, device: str) -> cfg.ModelConfig:
        model_path = hf_utils.resolve_model_path(self.model, self.revision, "model", self.download_dir)
        tokenizer_path = model_path
        if self.tokenizer or self.tokenizer_revision not in (None, self.revision):
            tokenizer_path = hf_utils.resolve_model_path(self.tokenizer or self.model,
                                                         self.tokenizer_revision or self.revision, "tokenizer",
                                                         self.download_dir)
        hf_config = hf_utils.load_hf_config(model_path, self.trust_remote_code, self.hf_overrides,
                                            self.rope_scaling, self.rope_theta)
        architectures = getattr(hf_config, "architectures", None) or []
        if not architectures:
            raise ValueError(f"model={self.model!r}: config.json names no architectures; set hf_overrides={{'architectures': [...]}}")
        limit = hf_utils.derive_max_model_len(cfg.text_config_of(hf_config))
        from pagoda.model_executor.models import max_model_len_cap

        window = max_model_len_cap(cfg.text_config_of(hf_config))
        if window is not None and window < limit:
            logger.warning("sliding window %d: attention is full, so max_model_len is capped at the window", window)
            limit = window
        from pagoda.model_executor.layers.quantization import resolve_quantization

        quantization, quantization_config = resolve_quantization(self.quantization, hf_config, model_path)
        task, pooler_config = self._resolve_task(architectures, model_path)
        if task == "embed":
            st_limit = read_sentence_transformers_max_len(model_path)
            if st_limit is not None and st_limit < limit:
                limit = st_limit  # sentence-transformers' max_seq_length, as vLLM does
        max_len = limit if self.max_model_len in (None, -1) else self.max_model_len  # -1: vLLM's "auto"
        if max_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {max_len}")
        if max_len > limit:
            raise ValueError(f"max_model_len={max_len} is larger than the model's limit of {limit} positions")
        return cfg.ModelConfig(
            model=self.model,
            model_path=model_path,
            tokenizer_path=tokenizer_path,
            hf_config=hf_config,
            architecture=architectures[0],
            dtype_name=self._resolve_dtype(hf_config, device),
            max_model_len=max_len,
            seed=self.seed,
            served_model_name=self.served_model_name or self.model,
            max_logprobs=self.max_logprobs,
            revision=self.revision,
            tokenizer_mode=self._resolved("tokenizer_mode"),
            skip_tokenizer_init=self.skip_tokenizer_init,
            trust_remote_code=self.trust_remote_code,
            generation_config=self._generation_config(model_path),
            generation_config_mode=self.generation_config,
            override_generation_config=dict(self.override_generation_config),
            task=task,
            pooler_config=pooler_config,
            limit_mm_per_prompt=cfg.check_mm_limits(self.limit_mm_per_prompt, architectures[0]),
            mm_processor_kwargs=cfg.check_mm_processor_kwargs(self.mm_processor_kwargs, architectures[0]),
            allowed_local_media_path=cfg.resolve_media_path(self.allowed_local_media_path),
            do_lower_case=task == "embed" and read_sentence_transformers_lowercase(model_path),
            quantization=quantization,
            quantization_config=quantization_config,
        )

    def _resolve_task(self, architectures: list[str], model_path: str) -> tuple[str, Any]:
        """("generate" | "embed", the PoolerConfig for embed); ValueError for a task the model cannot do."""
        from pagoda.model_executor.models import ModelRegistry

        pooling_only = ModelRegistry.is_pooling_only(architectures)
        task = self._requested_task()
        if task == "auto":
            task = "embed" if pooling_only else "generate"
        elif task == "generate" and pooling_only:
            raise ValueError(f"task='generate' is not possible: {architectures[0]} is an embedding model "
                             "without an LM head; use task='embed' (or 'auto')")
        overrides = self.pooler_config or self.override_pooler_config
        if task != "embed":
            if overrides:
                raise ValueError("override_pooler_config (pooler_config) applies only to task='embed'")
            return task, None
        pooling_type, normalize = ModelRegistry.pooling_defaults(architectures)
        default = PoolerConfig(pooling_type=pooling_type, normalize=normalize)
        return task, resolve_pooler_config(model_path, default, overrides)

    def _requested_task(self) -> str:
        """task, or what vLLM's runner / convert ask for: 'generate', 'embed' or 'auto'."""
        if self.convert == "embed" and self.runner == "generate":
            raise ValueError("convert='embed' makes an embedding (pooling) model; it needs runner='pooling' or 'auto'")
        implied = "embed" if self.convert == "embed" or self.runner == "pooling" else (
            "generate" if self.runner == "generate" else "auto")
        task = self._resolved("task")
        if "auto" not in (task, implied) and task != implied:
            raise ValueError(f"task={self.task!r} contradicts runner={self.runner!r} / convert={self.convert!r}; "
                             "give one of them")
        return implied if task == "auto" else task

    def _resolved(self, name: str) -> Any:
        """The field's value with a vLLM spelling (its `aliases` metadata) turned into Pagoda's."""
        aliases = next(f for f in dataclasses.fields(self) if f.name == name).metadata.get("aliases", {})
        value = getattr(self, name)
        return aliases.get(value, value)

    def _generation_config(self, model_path: str) -> dict:
        mode = self.generation_config
        if mode == "none":
            return {}
        if mode in ("auto", "vllm"):
            return hf_utils.load_generation_config(model_path)
        folder = os.path.expanduser(mode)
        if not os.path.isfile(os.path.join(folder, "generation_config.json")):
            raise ValueError(f"generation_config={mode!r} must be 'auto', 'vllm', 'none' or a folder holding "
                             "generation_config.json")
        return hf_utils.load_generation_config(folder)

    def _resolve_dtype(self, hf_config: Any, device: str) -> str:
        aliases = {"half": "float16", "float": "float32"}
        if self.dtype != "auto":
            return aliases.get(self.dtype, self.dtype)
        checkpoint = hf_utils.config_dtype_name(hf_config) or "float32"
        if checkpoint == "float32" and device == "cuda":
            return "bfloat16"
        return checkpoint


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def _cli_kwargs(f: dataclasses.Field) -> dict[str, Any]:
    """argparse keywords of a field's flag, from its metadata (cli_kind / cli_type), default and annotation."""
    meta, default = f.metadata, _field_default(f)
    choices = meta.get("choices")
    if choices:  # vLLM spellings parse; _check_choices turns the not-yet ones into a clear error
        choices = (*choices, *meta.get("aliases", {}), *meta.get("not_yet_values", ()))
    if "cli_kind" in meta:
        kind = meta["cli_kind"]
    elif meta.get("json_arg"):
        kind = compat.JSON
    elif isinstance(default, bool):
        kind = compat.BOOL
    else:
        annotation = str(f.type)
        kind = compat.FLOAT if "float" in annotation else compat.INT if "int" in annotation else compat.STR
    kwargs = compat.cli_kwargs(kind, default, meta["help"], choices)
    if "cli_type" in meta:
        kwargs["type"] = meta["cli_type"]
    return kwargs
