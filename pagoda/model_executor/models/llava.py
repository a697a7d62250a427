"""LLaVA (transformers' `LlavaForConditionalGeneration`): CLIP vision tower + projector + Llama.

Invariants:
- `embed_images` is transformers' `LlavaModel.get_image_features` stacked: hidden state(s)
  `vision_feature_layer` of the vision tower (a list is concatenated along features), the CLS
  token dropped for strategy "default" and kept for "full", then the two-layer projector.
- `forward` is the text model's: with `inputs_embeds` [T, H] (image features already merged at the
  image-token positions by the caller) they replace the token-embedding lookup; the KV cache,
  kv_cache_spec and logits are the language model's.
- `load_weights` accepts the checkpoint layouts seen: transformers 5 module names
  (`model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`),
  the hub layout (`vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`,
  `language_model.lm_head.*`), and what transformers 5.24's save_pretrained writes (the hub layout
  but `vision_tower.*` without `vision_model.`). Vision names map to `vision_tower.vision_model.*`.
  Text weights stream into `LlamaForCausalLM.load_weights` under its own names; the returned set
  holds this module's full parameter names, so the loader's missing-weight check applies as usual.
- With a `quant_config` only the text model is quantized (its layers' prefixes are
  "language_model.model.layers.N....", vLLM's names); the CLIP tower and the projector are plain torch
  layers and stay unquantized (an FP8 vision tensor in the checkpoint is a load error, never a cast).
  `module_name` maps a checkpoint module name of any layout to this module's, for skip lists.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend, AttentionMetadata
from pagoda.model_executor.layers.activation import get_act_fn
from pagoda.model_executor.models.clip import CLIPVisionModel, get_clip_act
from pagoda.model_executor.models.llama import LlamaForCausalLM
from pagoda.model_executor.models.utils import load_routed_weights, maybe_prefix

# text_config.model_type -> (text model class, its architecture name); all share LlamaForCausalLM's interface,
# weight names and `inputs_embeds`
def _text_models() -> dict[str, tuple[type[nn.Module], str]]:
    from pagoda.model_executor.models.llama import MistralForCausalLM
    from pagoda.model_executor.models.qwen2 import Qwen2ForCausalLM

    return {"llama": (LlamaForCausalLM, "LlamaForCausalLM"), "mistral": (MistralForCausalLM, "MistralForCausalLM"),
            "qwen2": (Qwen2ForCausalLM, "Qwen2ForCausalLM")}


def _projector_act(name: str) -> nn.Module:
    try:
        return get_act_fn(name, "projector_hidden_act")
    except ValueError:
        return get_clip_act(name, "projector_hidden_act")


class LlavaMultiModalProjector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, act: str, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=bias)
        self.act = _projector_act(act)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def _text_model_cls(text_config: Any) -> type[nn.Module]:
    model_type = getattr(text_config, "model_type", None)
    archs = list(getattr(text_config, "architectures", None) or [])
    models = _text_models()
    if model_type in models and all(a == models[model_type][1] for a in archs):
        return models[model_type][0]
    name = archs[0] if archs else model_type
    raise ValueError(
        f"LlavaForConditionalGeneration: text model {name!r} (text_config.model_type={model_type!r}) is not "
        f"supported; supported text models: {sorted(models)}"
    )


class LlavaForConditionalGeneration(nn.Module):
    supports_images = True
    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping  # the text models' (all alike)

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = hf_config
        vision_config, text_config = hf_config.vision_config, hf_config.text_config
        if getattr(vision_config, "model_type", "clip_vision_model") != "clip_vision_model":
            raise ValueError(
                f"LlavaForConditionalGeneration: vision tower {vision_config.model_type!r} is not supported; "
                "only 'clip_vision_model'"
            )
        image_token = getattr(hf_config, "image_token_index", None)
        if image_token is None:
            image_token = getattr(hf_config, "image_token_id", None)
        self.image_token_index = image_token
        self.vision_feature_layer = getattr(hf_config, "vision_feature_layer", -2)
        self.vision_feature_select_strategy = getattr(hf_config, "vision_feature_select_strategy", "default")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} is not supported; "
                "use 'default' or 'full'"
            )
        num_feature_layers = 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)

        self.vision_tower = CLIPVisionModel(vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(
            vision_config.hidden_size * num_feature_layers,
            text_config.hidden_size,
            getattr(hf_config, "projector_hidden_act", "gelu"),
            bias=bool(getattr(hf_config, "multimodal_projector_bias", True)),
        )
        self.language_model = _text_model_cls(text_config)(text_config, attn_backend, quant_config,
                                                           maybe_prefix(prefix, "language_model"))
        self.kv_cache_spec = self.language_model.kv_cache_spec

        num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
        self.num_image_tokens = num_patches + (1 if self.vision_feature_select_strategy == "full" else 0)

    # ---- embeddings -------------------------------------------------------------------------

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [T, H] of the text model."""
        return self.language_model.model.embed_tokens(input_ids)

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, num_image_tokens, text_hidden], as transformers' get_image_features."""
        layer = self.vision_feature_layer
        states = self.vision_tower(pixel_values, feature_layer=layer)
        indices = [layer] if isinstance(layer, int) else list(layer)
        pool = [self.vision_tower.select_hidden_state(states, i) for i in indices]
        if self.vision_feature_select_strategy == "default":
            pool = [h[:, 1:] for h in pool]
        features = pool[0] if len(pool) == 1 else torch.cat(pool, dim=-1)
        features = features.to(self.multi_modal_projector.linear_1.weight.dtype)
        return self.multi_modal_projector(features)

    # ---- text model -------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.language_model(input_ids, positions, kv_caches, attn_metadata, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden_states)

    # ---- weights ----------------------------------------------------------------------------

    @staticmethod
    def _route(name: str) -> tuple[str, str]:
        """("text", name in LlamaForCausalLM) | ("own", name in this module) | ("skip", name)."""
        if name.startswith("model.language_model."):  # transformers 5 module names
            return "text", "model." + name[len("model.language_model.") :]
        if name.startswith("lm_head."):
            return "text", name
        if name.startswith("language_model.model.") or name.startswith("language_model.lm_head."):
            return "text", name[len("language_model.") :]  # hub layout (also what save_pretrained writes)
        if name.startswith("model.vision_tower.") or name.startswith("model.multi_modal_projector."):
            name = name[len("model.") :]
        if name.startswith("multi_modal_projector."):
            return "own", name
        if name.startswith("vision_tower."):
            rest = name[len("vision_tower.") :]
            # transformers 5 drops CLIPVisionModel's `vision_model.` level (PrefixChange); hub files keep it
            if not rest.startswith("vision_model."):
                rest = "vision_model." + rest
            return "own", "vision_tower." + rest
        return "skip", name

    @classmethod
    def module_name(cls, checkpoint_name: str) -> str:
        """This module's name for a checkpoint module (or tensor) name of any layout `_route` reads."""
        kind, target = cls._route(checkpoint_name)
        return "language_model." + target if kind == "text" else target

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_routed_weights(self, weights)
