"""vLLM options that Pagoda accepts without implementing them (yet): one declaration each.

`ENGINE_OPTIONS` become the fields of `VllmCompatArgs`, which `EngineArgs` inherits: each is then, like
every engine option, one field that is both an `LLM(...)` keyword and a `--kebab-case` flag, with vLLM's
name, short aliases and value type. The server's own vLLM flags (tools, LoRA modules, ...) are declared
the same way in `entrypoints/openai/vllm_flags.py`. Every option is one of two kinds:

- NOT_YET: a feature a later issue adds (an FP8 KV cache, LoRA, multimodal input, parallelism, ...). Its
  default, or a value listed in `accepts`, is fine; anything else is a ValueError naming the keyword and
  the flag and saying "not supported yet".
- NO_EFFECT: what it tunes does not exist in Pagoda, or Pagoda always does what it asks. Any value is
  accepted; a non-default one is logged once per process, with the reason. Options vLLM has dropped
  default to None ("not given"), so that any value given is logged.

Sources: `vllm serve --help` of vLLM 0.17.1 (groups ModelConfig ... VllmConfig) and
vllm/engine/arg_utils.py; a few options of older releases that scripts still pass (--use-v2-block-manager,
--num-scheduler-steps, vLLM 0.6's speculative-decoding flags, ...) are kept too.
N-gram and draft-model speculative decoding are implemented: --speculative-config and vLLM 0.6's --speculative-model,
--num-speculative-tokens, --ngram-prompt-lookup-max/-min, --speculative-disable-by-batch-size,
--speculative-max-model-len and --speculative-draft-tensor-parallel-size are EngineArgs fields; the keys and
methods of vLLM's speculative_config that Pagoda does not implement are listed here (SPECULATIVE_CONFIG_NOT_YET,
SPECULATIVE_METHODS_NOT_YET). Structured output's --structured-outputs-config and vLLM 0.8-0.11's
--guided-decoding-backend and --guided-decoding-disable-* are EngineArgs fields too (config.py lists the
structured_outputs_config keys not supported yet). --quantization (-q) is an EngineArgs field (fp8; vLLM's other
methods stop with "not supported yet"). --kv-cache-dtype is an EngineArgs field too (auto, fp8, fp8_e4m3,
fp8_e5m2). vLLM's engine options --reasoning-parser and
--reasoning-parser-plugin are server flags in Pagoda (entrypoints/openai/cli_args.py, where only the chat
endpoint reads them); as `LLM(...)` keywords they are accepted with no effect (offline outputs are not
split), so vLLM code that passes them still runs.

Invariants:
- An option's kind, reason, default and value type live in its `Compat` record and nowhere else.
- `check` raises for the first NOT_YET option that holds a value it does not allow; `log_no_effect` logs a
  NO_EFFECT option's non-default value at most once per process. Neither reads anything but the values.
- `check_speculative_keys` accepts a speculative_config key only if EngineArgs implements it, or if
  SPECULATIVE_CONFIG_NOT_YET lists it and it holds a value listed there (vLLM's default first).
- Nothing here imports torch or transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

NOT_YET, NO_EFFECT = "not supported yet", "no effect"
# Value kinds, as vLLM parses them: BOOL is --x / --no-x; STRS and INTS take one or more values; JSON is a
# JSON object; HINT an integer such as 4096, 32k or 1K; OPTSTR a string that may be left out (--hf-token).
BOOL, INT, FLOAT, STR, JSON, STRS, INTS, HINT, OPTSTR, APPEND = (
    "bool", "int", "float", "str", "json", "strs", "ints", "hint", "optstr", "append")

QUANT = "deprecated quantization methods are not implemented (quantization='fp8' is)"
KV_SCALES = ("FP8 KV-cache scales are read from the checkpoint (k_scale / v_scale, else 1.0); computing them from the "
             "first batch is not implemented yet")
SPEC_DRAFT = ("the draft model's quantization is read from its checkpoint (an FP8 draft works, as an unquantized "
              "one); naming it here comes later")
SPEC_TYPICAL = ("only the typical acceptance sampler reads it, and Pagoda verifies drafts by rejection sampling "
                "(vLLM V1 has no typical acceptance sampler either)")
LORA = "LoRA adapters come in a later issue"
MM = "multimodal input comes in a later issue"
PARALLEL = "data parallelism and multi-node launchers other than Ray come in a later issue; Pagoda runs one engine"
REASONING_OFFLINE = ("offline outputs are not split into reasoning and content (the server's --reasoning-parser "
                     "splits chat responses; vLLM reads it offline only to start structured output after the "
                     "reasoning, and Pagoda's output constraints apply from the first generated token)")
OFFLOAD = "CPU offloading comes in a later issue"
TRACE = "tracing and profiling come in a later issue"
METRICS = "this metric is not collected yet"
DISAGG = "KV transfer and disaggregated serving come in a later issue"
SCHED = "this scheduling knob is not implemented yet"
MAMBA = "Pagoda serves no Mamba or hybrid models"
MOE = "Pagoda serves no mixture-of-experts models"
NO_COMPILE = ("Pagoda does not torch.compile the model; --enforce-eager and --max-cudagraph-capture-size "
              "control its CUDA graphs")
V1 = "vLLM V1 ignores it too: one schedule per step, preemption by recomputation"


@dataclass(frozen=True)
class Compat:
    """One vLLM option Pagoda accepts: its name, value kind, vLLM default, kind of support and why."""

    name: str
    kind: str
    default: Any
    support: str  # NOT_YET | NO_EFFECT
    reason: str
    flags: tuple[str, ...] = ()  # vLLM's short aliases, e.g. ("-tp",)
    accepts: tuple = ()  # values other than the default that Pagoda can honour (NOT_YET)
    allow: Callable[[Any], bool] | None = None  # a test for further values it can honour

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allows(self, value: Any) -> bool:
        if _same(value, self.default) or any(_same(value, v) for v in self.accepts):
            return True
        return self.allow is not None and self.allow(value)

    def help(self) -> str:
        return f"[{self.support}] {self.reason}."

    def field(self) -> dataclasses.Field:
        metadata = {"help": self.help(), "compat": self, "flags": self.flags, "cli_kind": self.kind}
        if isinstance(self.default, (list, dict, set)):
            return dataclasses.field(default_factory=lambda d=self.default: type(d)(d), metadata=metadata)
        return dataclasses.field(default=self.default, metadata=metadata)


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, set, dict)) and not value)


def _same(value: Any, default: Any) -> bool:
    """Equal, counting None, "" and every empty container (vLLM's `set()`, `{}`, `[]`) as one 'unset' value."""
    if _unset(value) and _unset(default):
        return True
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool) and value == default
    return value == default


def _c(name, kind, default, support, reason, *flags, **extra) -> Compat:
    return Compat(name, kind, default, support, reason, tuple(flags), **extra)


ENGINE_OPTIONS: tuple[Compat, ...] = (
    # ModelConfig
    _c("allow_deprecated_quantization", BOOL, False, NOT_YET, QUANT),
    _c("hf_config_path", STR, None, NOT_YET, "config.json is read from the model folder only"),
    _c("config_format", STR, "auto", NOT_YET, "only Hugging Face config.json files are read", accepts=("hf",)),
    _c("code_revision", STR, None, NO_EFFECT, "models resolve offline; remote code is read from the resolved folder"),
    _c("hf_token", OPTSTR, None, NO_EFFECT, "Pagoda never contacts the Hugging Face hub"),
    _c("model_impl", STR, "auto", NOT_YET, "Pagoda runs its own model implementations", accepts=("vllm",)),
    _c("logprobs_mode", STR, "raw_logprobs", NOT_YET, "logprobs are always those of the raw logits (raw_logprobs)"),
    _c("logits_processors", STRS, None, NOT_YET,
       "engine-wide logits-processor classes are not loaded (per-request SamplingParams.logits_processors work)"),
    _c("logits_processor_pattern", STR, None, NOT_YET, "engine-wide logits-processor classes are not loaded"),
    _c("io_processor_plugin", STR, None, NOT_YET, "IO processor plugins are not loaded"),
    _c("override_attention_dtype", STR, None, NOT_YET, "attention runs in the model dtype"),
    _c("enable_prompt_embeds", BOOL, False, NOT_YET, "prompt embeddings as input come with multimodal input"),
    _c("enable_return_routed_experts", BOOL, False, NOT_YET, MOE),
    _c("enable_sleep_mode", BOOL, False, NOT_YET, "sleep mode is not implemented yet"),
    _c("disable_sliding_window", BOOL, False, NO_EFFECT,
       "Pagoda always does what it asks: full attention, max_model_len capped at the sliding window"),
    _c("allowed_media_domains", STRS, None, NOT_YET, MM),
    # LoadConfig
    _c("ignore_patterns", STRS, ["original/**/*"], NOT_YET, "the loader reads the weight files at the top of the "
                                                            "model folder only"),
    _c("model_loader_extra_config", JSON, None, NOT_YET, "the loader takes no extra configuration"),
    _c("pt_load_map_location", STR, "cpu", NOT_YET, ".bin/.pt weights are always read to the CPU first"),
    _c("safetensors_load_strategy", STR, "lazy", NO_EFFECT, "Pagoda's loader reads safetensors files its own way"),
    _c("use_tqdm_on_load", BOOL, True, NO_EFFECT, "the loader logs its progress its own way"),
    # AttentionConfig, KernelConfig, CompilationConfig, VllmConfig tuning
    _c("attention_backend", STR, None, NO_EFFECT, "the backend follows the device (Triton on CUDA, torch on CPU)"),
    _c("attention_config", JSON, None, NO_EFFECT, "the backend follows the device (Triton on CUDA, torch on CPU)",
       "-ac"),
    _c("compilation_config", JSON, None, NO_EFFECT, NO_COMPILE, "-cc"),
    _c("optimization_level", INT, 2, NO_EFFECT, NO_COMPILE, "-O"),
    _c("performance_mode", STR, "balanced", NO_EFFECT, "Pagoda has one tuning; see --max-num-batched-tokens"),
    _c("cudagraph_capture_sizes", INTS, None, NOT_YET, "graphs are captured at Pagoda's batch-size buckets up to "
                                                       "--max-cudagraph-capture-size"),
    _c("cuda_graph_sizes", INTS, None, NOT_YET, "graphs are captured at Pagoda's batch-size buckets up to "
                                                "--max-cudagraph-capture-size"),
    _c("max_seq_len_to_capture", INT, None, NO_EFFECT, "decode graphs serve every context length"),
    _c("kernel_config", JSON, None, NO_EFFECT, "Pagoda's kernels are tuned in pagoda/kernels/tuning.py"),
    _c("enable_flashinfer_autotune", BOOL, None, NO_EFFECT, "Pagoda uses no FlashInfer kernels"),
    _c("moe_backend", STR, "auto", NO_EFFECT, MOE),
    _c("additional_config", JSON, None, NO_EFFECT, "only vLLM platform plugins read it"),
    # StructuredOutputsConfig: structured_outputs_config and guided_decoding_* are EngineArgs fields
    _c("reasoning_parser", STR, "", NO_EFFECT, REASONING_OFFLINE),
    _c("reasoning_parser_plugin", STR, "", NO_EFFECT, REASONING_OFFLINE),
    # speculative decoding: vLLM 0.6's flags that EngineArgs does not implement (vLLM V1 dropped them all)
    _c("speculative_model_quantization", STR, None, NOT_YET, SPEC_DRAFT),
    _c("spec_decoding_acceptance_method", STR, None, NOT_YET,
       "drafts are verified by rejection sampling only (typical_acceptance_sampler is not implemented)",
       accepts=("rejection_sampler",)),
    _c("typical_acceptance_sampler_posterior_threshold", FLOAT, None, NO_EFFECT, SPEC_TYPICAL),
    _c("typical_acceptance_sampler_posterior_alpha", FLOAT, None, NO_EFFECT, SPEC_TYPICAL),
    _c("disable_logprobs_during_spec_decoding", OPTSTR, None, NO_EFFECT,
       "logprobs follow each request's SamplingParams, with or without speculation (as in vLLM V1)"),
    _c("speculative_disable_mqa_scorer", BOOL, None, NO_EFFECT,
       "drafts are scored in the step's one forward pass; there is no MQA scorer or batch expansion"),
    # ParallelConfig
    # tensor_parallel_size, pipeline_parallel_size and distributed_executor_backend are EngineArgs fields
    _c("data_parallel_size", INT, 1, NOT_YET, PARALLEL, "-dp"),
    _c("data_parallel_rank", INT, None, NOT_YET, PARALLEL, "-dpn"),
    _c("data_parallel_start_rank", INT, None, NOT_YET, PARALLEL, "-dpr"),
    _c("data_parallel_size_local", INT, None, NOT_YET, PARALLEL, "-dpl"),
    _c("data_parallel_address", STR, None, NOT_YET, PARALLEL, "-dpa"),
    _c("data_parallel_rpc_port", INT, None, NOT_YET, PARALLEL, "-dpp"),
    _c("data_parallel_backend", STR, "mp", NOT_YET, PARALLEL, "-dpb"),
    _c("data_parallel_hybrid_lb", BOOL, False, NOT_YET, PARALLEL, "-dph"),
    _c("data_parallel_external_lb", BOOL, False, NOT_YET, PARALLEL, "-dpe"),
    _c("data_parallel_multi_port_external_lb", BOOL, False, NOT_YET, PARALLEL),
    _c("decode_context_parallel_size", INT, 1, NOT_YET, PARALLEL, "-dcp"),
    _c("prefill_context_parallel_size", INT, 1, NOT_YET, PARALLEL, "-pcp"),
    _c("dcp_kv_cache_interleave_size", INT, 1, NOT_YET, PARALLEL),
    _c("cp_kv_cache_interleave_size", INT, 1, NOT_YET, PARALLEL),
    _c("nnodes", INT, 1, NOT_YET, PARALLEL, "-n"),
    _c("node_rank", INT, 0, NOT_YET, PARALLEL, "-r"),
    _c("master_addr", STR, "127.0.0.1", NOT_YET, PARALLEL),
    _c("master_port", INT, 29501, NOT_YET, PARALLEL),
    _c("enable_expert_parallel", BOOL, False, NOT_YET, PARALLEL, "-ep"),
    _c("enable_elastic_ep", BOOL, False, NOT_YET, PARALLEL),
    _c("enable_eplb", BOOL, False, NOT_YET, PARALLEL),
    _c("eplb_config", JSON, None, NOT_YET, PARALLEL),
    _c("expert_placement_strategy", STR, "linear", NOT_YET, PARALLEL),
    _c("all2all_backend", STR, "allgather_reducescatter", NOT_YET, PARALLEL),
    _c("enable_dbo", BOOL, False, NOT_YET, PARALLEL),
    _c("ubatch_size", INT, None, NOT_YET, PARALLEL, accepts=(0, 1)),
    _c("dbo_decode_token_threshold", INT, 32, NOT_YET, PARALLEL),
    _c("dbo_prefill_token_threshold", INT, 512, NOT_YET, PARALLEL),
    _c("disable_nccl_for_dp_synchronization", BOOL, False, NOT_YET, PARALLEL),
    _c("ray_workers_use_nsight", BOOL, False, NOT_YET, PARALLEL),
    _c("worker_cls", STR, "auto", NOT_YET, "Pagoda's worker class is fixed"),
    _c("worker_extension_cls", STR, "", NOT_YET, "Pagoda's worker class is fixed"),
    _c("max_parallel_loading_workers", INT, None, NO_EFFECT, "weights load in one process"),
    _c("disable_custom_all_reduce", BOOL, False, NO_EFFECT, "tensor-parallel all-reduces always go through "
                                                           "torch.distributed (NCCL on CUDA, gloo on CPU)"),
    # CacheConfig and OffloadConfig
    # kv_cache_dtype is an EngineArgs field
    _c("calculate_kv_scales", BOOL, False, NOT_YET, KV_SCALES),
    _c("swap_space", FLOAT, 4.0, NO_EFFECT, "preempted requests are recomputed, never swapped to the CPU (vLLM V1 "
                                            "ignores it too)"),
    _c("prefix_caching_hash_algo", STR, "sha256", NO_EFFECT, "block hashes are always 128-bit BLAKE2b digests"),
    _c("cpu_offload_gb", FLOAT, 0.0, NOT_YET, OFFLOAD),
    _c("cpu_offload_params", STRS, None, NOT_YET, OFFLOAD),
    _c("offload_backend", STR, "auto", NOT_YET, OFFLOAD),
    _c("offload_group_size", INT, 0, NOT_YET, OFFLOAD),
    _c("offload_num_in_group", INT, 1, NOT_YET, OFFLOAD),
    _c("offload_params", STRS, None, NOT_YET, OFFLOAD),
    _c("offload_prefetch_step", INT, 1, NOT_YET, OFFLOAD),
    _c("kv_offloading_size", FLOAT, None, NOT_YET, OFFLOAD),
    _c("kv_offloading_backend", STR, "native", NOT_YET, OFFLOAD),
    _c("kv_sharing_fast_prefill", BOOL, False, NOT_YET, "cross-layer KV sharing is not implemented yet"),
    _c("mamba_block_size", INT, None, NO_EFFECT, MAMBA),
    _c("mamba_cache_dtype", STR, "auto", NO_EFFECT, MAMBA),
    _c("mamba_cache_mode", STR, "none", NO_EFFECT, MAMBA),
    _c("mamba_ssm_cache_dtype", STR, "auto", NO_EFFECT, MAMBA),
    # MultiModalConfig
    _c("media_io_kwargs", JSON, None, NOT_YET, MM),
    _c("enable_mm_embeds", BOOL, False, NOT_YET, MM),
    _c("interleave_mm_strings", BOOL, False, NOT_YET, MM),
    _c("mm_encoder_only", BOOL, False, NOT_YET, MM),
    _c("mm_encoder_tp_mode", STR, "weights", NOT_YET, MM),
    _c("mm_encoder_attn_backend", STR, None, NOT_YET, MM),
    _c("video_pruning_rate", FLOAT, None, NOT_YET, MM),
    _c("language_model_only", BOOL, False, NOT_YET, "a vision-language model always loads its vision encoder"),
    _c("mm_processor_cache_gb", FLOAT, 4.0, NO_EFFECT, "there is no multimodal processor cache (each request's images are processed once, in the frontend)"),
    _c("mm_processor_cache_type", STR, "lru", NO_EFFECT, "there is no multimodal processor cache"),
    _c("mm_shm_cache_max_object_size_mb", INT, 128, NO_EFFECT, "there is no multimodal processor cache"),
    _c("disable_mm_preprocessor_cache", BOOL, False, NO_EFFECT, "there is no multimodal processor cache"),
    _c("skip_mm_profiling", BOOL, False, NO_EFFECT, "the memory profile does not run the vision encoder"),
    _c("disable_chunked_mm_input", BOOL, False, NO_EFFECT, "there is no multimodal input to chunk"),
    # LoRAConfig (lora_extra_vocab_size, enable_lora_bias: vLLM < 0.11)
    _c("enable_lora", BOOL, False, NOT_YET, LORA),
    _c("max_loras", INT, 1, NOT_YET, LORA),
    _c("max_lora_rank", INT, 16, NOT_YET, LORA),
    _c("max_cpu_loras", INT, None, NOT_YET, LORA),
    _c("lora_dtype", STR, "auto", NOT_YET, LORA),
    _c("fully_sharded_loras", BOOL, False, NOT_YET, LORA),
    _c("default_mm_loras", JSON, None, NOT_YET, LORA),
    _c("enable_tower_connector_lora", BOOL, False, NOT_YET, LORA),
    _c("specialize_active_lora", BOOL, False, NOT_YET, LORA),
    _c("lora_extra_vocab_size", INT, 256, NOT_YET, LORA),
    _c("enable_lora_bias", BOOL, False, NOT_YET, LORA),
    # ObservabilityConfig, profiling, KV transfer
    _c("otlp_traces_endpoint", STR, None, NOT_YET, TRACE),
    _c("collect_detailed_traces", STR, None, NOT_YET, TRACE),
    _c("enable_layerwise_nvtx_tracing", BOOL, False, NOT_YET, TRACE),
    _c("profiler_config", JSON, None, NOT_YET, TRACE),
    _c("cudagraph_metrics", BOOL, False, NOT_YET, METRICS),
    _c("enable_mfu_metrics", BOOL, False, NOT_YET, METRICS),
    _c("kv_cache_metrics", BOOL, False, NOT_YET, METRICS),
    _c("kv_cache_metrics_sample", FLOAT, 0.01, NOT_YET, METRICS),
    _c("enable_logging_iteration_details", BOOL, False, NOT_YET, METRICS),
    _c("show_hidden_metrics_for_version", STR, None, NO_EFFECT, "Pagoda hides no deprecated metrics"),
    _c("aggregate_engine_logging", BOOL, False, NO_EFFECT, "Pagoda runs one engine: its stats are always aggregate"),
    _c("kv_transfer_config", JSON, None, NOT_YET, DISAGG),
    _c("kv_events_config", JSON, None, NOT_YET, DISAGG),
    _c("ec_transfer_config", JSON, None, NOT_YET, DISAGG),
    _c("weight_transfer_config", JSON, None, NOT_YET, "weight transfer (RL training) comes in a later issue"),
    # SchedulerConfig (num_lookahead_slots ... use_v2_block_manager: vLLM V0 options that V1 dropped; their
    # default None means "not given", so any value given is logged)
    _c("max_num_partial_prefills", INT, 1, NOT_YET, SCHED),
    _c("max_long_partial_prefills", INT, 1, NOT_YET, SCHED),
    _c("long_prefill_token_threshold", INT, 0, NOT_YET, SCHED),
    _c("stream_interval", INT, 1, NOT_YET, "outputs are streamed after every step"),
    _c("scheduler_cls", STR, None, NOT_YET, "Pagoda's scheduler class is fixed"),
    _c("disable_hybrid_kv_cache_manager", BOOL, False, NO_EFFECT, "Pagoda's models have one KV-cache group"),
    _c("num_lookahead_slots", INT, None, NO_EFFECT, V1),
    _c("num_scheduler_steps", INT, None, NO_EFFECT, V1),
    _c("multi_step_stream_outputs", BOOL, None, NO_EFFECT, V1),
    _c("scheduler_delay_factor", FLOAT, None, NO_EFFECT, V1),
    _c("preemption_mode", STR, None, NO_EFFECT, V1),
    _c("disable_async_output_proc", BOOL, None, NO_EFFECT, V1),
    _c("use_v2_block_manager", BOOL, None, NO_EFFECT, "vLLM ignores it too since 0.6.2 (one block manager)"),
)

# vLLM's speculative_config keys that Pagoda does not implement yet -> the values it can honour (vLLM's default
# first); any other value is "not supported yet". From vllm/config/speculative.py (0.8 ... 0.17 and later) and
# the keys vLLM 0.8 had (acceptance_method, posterior_*, disable_mqa_scorer, disable_logprobs, disable_log_stats).
SPECULATIVE_CONFIG_NOT_YET: dict[str, tuple] = {
    "quantization": (None,), "revision": (None,), "code_revision": (None,), "enforce_eager": (None,),
    "tensor_parallel_size": (None,), "kv_cache_dtype": (None,), "moe_backend": (None,),
    "attention_backend": (None,), "draft_load_config": (None,), "speculative_token_tree": (None,),
    "parallel_drafting": (False,), "disable_padded_drafter_batch": (False,),
    "disable_eagle_block_drop": (False,), "use_local_argmax_reduction": (False,),
    "use_heterogeneous_vocab": (False,), "index_share_for_mtp_iteration": (None,),
    "num_speculative_tokens_per_batch_size": (None,), "suffix_decoding_max_tree_depth": (24,),
    "suffix_decoding_max_cached_requests": (10000,), "suffix_decoding_max_spec_factor": (1.0,),
    "suffix_decoding_min_token_prob": (0.1,), "rejection_sample_method": ("standard",),
    "synthetic_acceptance_rates": (None,), "synthetic_acceptance_length": (None,),
    "draft_sample_method": ("greedy",), "enable_adaptive_verification": (False,), "dspark_draft_topk": (None,),
    "acceptance_method": ("rejection_sampler",), "posterior_threshold": (None,), "posterior_alpha": (None,),
    "disable_mqa_scorer": (False, True), "disable_logprobs": (True, False), "disable_log_stats": (None, False, True),
    "target_model_config": (None,), "target_parallel_config": (None,), "draft_model_config": (None,),
    "draft_parallel_config": (None,),
}
# vLLM's speculative methods Pagoda does not implement yet (also any "*_mtp" one); "ngram", "ngram_gpu" and
# "draft_model" are implemented.
SPECULATIVE_METHODS_NOT_YET = ("eagle", "eagle3", "medusa", "mlp_speculator", "mtp", "suffix",
                               "ngram-eagle", "dflash", "dspark", "extract_hidden_states",
                               "custom_class")



def check_speculative_keys(spec: Mapping[str, Any], implemented: Iterable[str]) -> None:
    """ValueError for a speculative_config key that is unknown (naming a close one and the allowed keys), or
    that SPECULATIVE_CONFIG_NOT_YET lists and holds a value Pagoda cannot honour."""
    implemented = list(implemented)
    unknown = [key for key in spec if key not in implemented and key not in SPECULATIVE_CONFIG_NOT_YET]
    if unknown:
        close = [c for c in (closest_name(key, implemented) for key in unknown) if c]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"speculative_config (--speculative-config) has unknown key(s) {unknown}{hint}; "
                         f"allowed keys: {implemented}")
    not_yet = sorted(key for key, value in spec.items() if key in SPECULATIVE_CONFIG_NOT_YET
                     and not any(_same(value, ok) for ok in SPECULATIVE_CONFIG_NOT_YET[key]))
    if not_yet:
        defaults = {key: SPECULATIVE_CONFIG_NOT_YET[key][0] for key in not_yet}
        raise ValueError(f"speculative_config (--speculative-config) key(s) {not_yet} are not supported yet (allowed: "
                         f"vLLM's defaults {defaults}); Pagoda implements the keys {implemented}")


def speculative_method_not_yet(method: Any) -> bool:
    """Whether `method` is one of vLLM's speculative methods that Pagoda does not implement yet."""
    return method in SPECULATIVE_METHODS_NOT_YET or (isinstance(method, str) and method.endswith("_mtp"))


VllmCompatArgs = dataclasses.make_dataclass(
    "VllmCompatArgs", [(o.name, Any, o.field()) for o in ENGINE_OPTIONS], kw_only=True)
VllmCompatArgs.__module__ = __name__
VllmCompatArgs.__doc__ = "The vLLM engine options of ENGINE_OPTIONS, as keyword-only dataclass fields."


def compat_of(f: dataclasses.Field) -> Compat | None:
    return f.metadata.get("compat")


def check(values: Mapping[str, Any], options: Iterable[Compat]) -> None:
    """ValueError for the first NOT_YET option whose value Pagoda cannot honour (names keyword and flag)."""
    for opt in options:
        value = values.get(opt.name, opt.default)
        if opt.support == NOT_YET and not opt.allows(value):
            allowed = ", ".join(repr(v) for v in (opt.default, *opt.accepts))
            raise ValueError(f"{opt.name}={value!r} ({', '.join((opt.flag, *opt.flags))}) is not supported yet: "
                             f"{opt.reason} (allowed: {allowed})")


_logged: set[tuple[str, str]] = set()


def log_no_effect(values: Mapping[str, Any], options: Iterable[Compat]) -> None:
    """Log once per process each NO_EFFECT option that holds a non-default value."""
    for opt in options:
        value = values.get(opt.name, opt.default)
        if opt.support == NO_EFFECT and not _same(value, opt.default) and (opt.name, repr(value)) not in _logged:
            _logged.add((opt.name, repr(value)))
            logger.warning("%s (%s=%r) has no effect in Pagoda: %s", opt.flag, opt.name, value, opt.reason)


# ---- value parsing, as vLLM's argparse does it --------------------------------------------------------
def human_readable_int(value: str) -> int:
    """'4096', '32k' (32,000), '1K' (1,024), '25.6k' (25,600), '2M', '1G': vLLM's human_readable_int."""
    text = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", text)
    if not match:
        return int(text)
    number, suffix = match.groups()
    if suffix.islower():
        return int(float(number) * 10 ** (3 * "kmgt".index(suffix) + 3))
    if "." in number:
        raise argparse.ArgumentTypeError(f"{value!r}: decimals need a decimal suffix ({number}{suffix.lower()})")
    return int(number) * 2 ** (10 * "KMGT".index(suffix) + 10)


def human_readable_int_or_auto(value: str) -> int | None:
    """As human_readable_int; '-1' and 'auto' mean 'derive it from the model' (None)."""
    if value.strip() in ("-1", "auto"):
        return None
    return human_readable_int(value)


def parse_json(value: str) -> Any:
    """A JSON value (vLLM's JSON flags), or an argparse error that shows it."""
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON {value!r}: {exc}") from None


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(value: str) -> Any:
        return None if value in ("", "None") else parse(value)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


_TYPES = {INT: int, FLOAT: float, STR: str, HINT: human_readable_int, JSON: parse_json, STRS: str, INTS: int,
          OPTSTR: str, APPEND: str}


def cli_kwargs(kind: str, default: Any, help_text: str, choices: tuple | None = None) -> dict[str, Any]:
    """argparse keywords for a flag of value kind `kind` (BOOL gives --x and --no-x, as vLLM's flags)."""
    if kind == BOOL:
        return {"action": argparse.BooleanOptionalAction, "default": default, "help": help_text}
    kwargs: dict[str, Any] = {"default": default, "help": help_text}
    parse = _TYPES[kind]
    kwargs["type"] = _optional(parse) if default is None and kind not in (JSON, STRS, INTS) else parse
    if kind in (STRS, INTS):
        kwargs["nargs"] = "+"
    elif kind == OPTSTR:
        kwargs.update(nargs="?", const=True)
    elif kind == APPEND:
        kwargs["action"] = "append"
    if choices:
        kwargs["choices"] = choices
    return kwargs


# ---- "did you mean" ---------------------------------------------------------------------------------------
def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The candidate genuinely close to `name`, else None.

    Close means at most max(1, len // 5) single-character edits (a swap of neighbours counts as one) after
    dropping leading dashes and reading '_' as '-', or `name` being the start of exactly one candidate
    (an abbreviation). So `--enable-lorra` finds `--enable-lora` and `--foo-bar-baz` finds nothing.
    """
    key = _bare(name)
    if not key:
        return None
    candidates = {_bare(n): n for n in names}
    if key in candidates:
        return candidates[key]
    limit = max(1, len(key) // 5)
    scored = sorted((_edit_distance(key, bare), bare) for bare in candidates)
    if scored and scored[0][0] <= limit:
        return candidates[scored[0][1]]
    prefixed = [bare for bare in candidates if bare.startswith(key) and len(key) >= 4]
    return candidates[prefixed[0]] if len(prefixed) == 1 else None


def _bare(name: str) -> str:
    return name.lstrip("-").replace("_", "-").lower()


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]
