"""Which model class serves which Hugging Face architecture name.

Invariants:
- Model modules are imported lazily, on first resolution of one of their architectures; listing
  the supported architectures imports nothing.
- An entry is either a class or a "module.path:ClassName" string; `register_model` adds or
  replaces one (out-of-tree models) and is effective for every later `resolve_model_cls`.

Every registered class has this interface (embedding-only classes: no compute_logits, and a
kv_cache_spec with num_layers == 0 when they keep no KV cache, as BERT):
    __init__(hf_config, attn_backend: AttentionBackend, quant_config=None, prefix="")
        (quant_config: a QuantizationConfig; the loader passes it only when the model is quantized, so
        an out-of-tree class with the two-argument signature still serves unquantized models)
    packed_modules_mapping: a CLASS attribute, {fused layer: [its checkpoint pieces]} (quantization skip lists);
        optional `module_name(checkpoint_name) -> module name` where checkpoint names differ from module names
    forward(input_ids [T] int64, positions [T] int64, kv_caches: list[Tensor], attn_metadata)
        -> hidden states [T, H] after the final norm (what compute_logits takes)
    compute_logits(hidden [N, H]) -> logits [N, vocab_size] (only the rows given)
    load_weights(Iterable[(checkpoint_name, Tensor)]) -> set of parameter names loaded
    kv_cache_spec: an ATTRIBUTE (set in __init__), a KVCacheSpec(num_layers, num_kv_heads, head_size);
        kv_caches[i] has shape [2, num_blocks, block_size, num_kv_heads, head_size].
A class that takes images (listed in _IMAGE_ARCHS) also has `supports_images = True`,
    embed_input_ids(input_ids [T]) -> [T, H], embed_images(pixel_values [N, ...], **processor_extras)
    -> [N, tokens, H] or a list of N [tokens_i, H] (LLaVA-NeXT: embed_images(pixel_values, image_sizes)),
    and forward(..., inputs_embeds=None): [T, H] embeddings that replace the token lookup.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from torch import nn

from pagoda.hf_utils import derive_max_model_len

logger = logging.getLogger(__name__)

_MODELS: dict[str, str] = {
    "LlamaForCausalLM": "pagoda.model_executor.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "pagoda.model_executor.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "pagoda.model_executor.models.qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "pagoda.model_executor.models.qwen3:Qwen3ForCausalLM",
    "OPTForCausalLM": "pagoda.model_executor.models.opt:OPTForCausalLM",
    "GPT2LMHeadModel": "pagoda.model_executor.models.gpt2:GPT2LMHeadModel",
    "LlavaForConditionalGeneration": "pagoda.model_executor.models.llava:LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "pagoda.model_executor.models.llava_next:LlavaNextForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "pagoda.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration",
    # Embedding models (task "embed"): encoders, and decoders saved without their LM head.
    "BertModel": "pagoda.model_executor.models.bert:BertModel",
    "LlamaModel": "pagoda.model_executor.models.adapters:LlamaEmbeddingModel",
    "MistralModel": "pagoda.model_executor.models.adapters:MistralEmbeddingModel",
    "Qwen2Model": "pagoda.model_executor.models.adapters:Qwen2EmbeddingModel",
    "Qwen3Model": "pagoda.model_executor.models.adapters:Qwen3EmbeddingModel",
}

# Architectures that only embed (no LM head), with their default (pooling_type, normalize) as vLLM
# has them. Any generative architecture can embed too (task="embed"): LAST token, normalized.
_POOLING_ARCHS: dict[str, tuple[str, bool]] = {
    "BertModel": ("CLS", True),
    "LlamaModel": ("LAST", True),
    "MistralModel": ("LAST", True),
    "Qwen2Model": ("LAST", True),
    "Qwen3Model": ("LAST", True),
}
_DECODER_POOLING = ("LAST", True)

# Architectures whose class takes images (prompt key multi_modal_data); the frontend checks this without
# importing the model's module.
_IMAGE_ARCHS = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                "Qwen2_5_VLForConditionalGeneration")


def accepts_images(architecture: str) -> bool:
    return architecture in _IMAGE_ARCHS


class _ModelRegistry:
    def __init__(self, models: dict[str, str]):
        self._models: dict[str, str | type[nn.Module]] = dict(models)

    def register_model(self, arch_name: str, model_cls: str | type[nn.Module]) -> None:
        """Serve `arch_name` with `model_cls` (a class, or "module.path:ClassName" imported lazily)."""
        if not isinstance(arch_name, str) or not arch_name:
            raise ValueError(f"arch_name must be a non-empty string, got {arch_name!r}")
        if isinstance(model_cls, str):
            if model_cls.count(":") != 1:
                raise ValueError(f"model_cls={model_cls!r} must be a class or 'module.path:ClassName'")
        elif not isinstance(model_cls, type):
            raise TypeError(f"model_cls must be a class or 'module.path:ClassName', got {type(model_cls).__name__}")
        if arch_name in self._models:
            logger.warning("architecture %s is already registered; overriding it with %s", arch_name, model_cls)
        self._models[arch_name] = model_cls

    def is_pooling_only(self, architectures: list[str] | str) -> bool:
        """True when the first supported architecture is an embedding-only model (task "auto" → "embed")."""
        for arch in [architectures] if isinstance(architectures, str) else architectures or []:
            if arch in self._models:
                return arch in _POOLING_ARCHS
        return False

    def pooling_defaults(self, architectures: list[str] | str) -> tuple[str, bool]:
        """(pooling_type, normalize) an architecture embeds with unless configured otherwise."""
        for arch in [architectures] if isinstance(architectures, str) else architectures or []:
            if arch in _POOLING_ARCHS:
                return _POOLING_ARCHS[arch]
        return _DECODER_POOLING

    def get_supported_archs(self) -> list[str]:
        return sorted(self._models)

    def is_supported(self, arch_name: str) -> bool:
        return arch_name in self._models

    def resolve_model_cls(self, architectures: list[str] | str) -> type[nn.Module]:
        """The class of the first supported name in `architectures` (the config's list)."""
        if isinstance(architectures, str):
            architectures = [architectures]
        for arch in architectures or []:
            entry = self._models.get(arch)
            if entry is None:
                continue
            if isinstance(entry, str):
                module_name, class_name = entry.split(":")
                entry = getattr(importlib.import_module(module_name), class_name)
                self._models[arch] = entry
            return entry
        raise ValueError(
            f"Model architectures {list(architectures or [])} are not supported. "
            f"Supported: {self.get_supported_archs()}"
        )


ModelRegistry = _ModelRegistry(_MODELS)


def max_model_len_cap(hf_config: Any) -> int | None:
    """The longest max_model_len the engine may serve, when lower than the model's position limit.

    Sliding-window attention is not implemented: a model with a window smaller than its position
    limit is served with full attention, which agrees with the window only up to its length.
    """
    window = getattr(hf_config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    if getattr(hf_config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types and "sliding_attention" not in layer_types:
        return None
    return window if window < derive_max_model_len(hf_config) else None
