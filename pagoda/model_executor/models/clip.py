"""CLIP vision encoder (the vision tower of LLaVA), in plain torch.

Invariants:
- Module and parameter names mirror transformers' `CLIPVisionModel`
  (`vision_model.embeddings.*`, `vision_model.pre_layrnorm.*`, `vision_model.encoder.layers.N.*`,
  `vision_model.post_layernorm.*`), so checkpoint names load without renaming.
- No KV cache and no attention metadata: each image's patches (plus its CLS token) attend to each
  other bidirectionally with `scaled_dot_product_attention`; images in a batch never interact.
- `forward` returns the hidden states as transformers' `output_hidden_states` has them:
  index 0 is the embedding output after `pre_layrnorm`, index i the output of encoder layer i - 1;
  `post_layernorm` is never applied to them (LLaVA does not use it, but the parameter exists so
  checkpoints load completely).
- With `feature_layer` given, layers past the one needed are not run; the returned list is then
  shorter, but the requested index (negative ones counted from the full depth) is still valid
  through `select_hidden_state`.
- Images must be `image_size` square (no position-embedding interpolation).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_CLIP_ACTS = {
    "quick_gelu": QuickGELU,
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
}


def get_clip_act(name: str, field_name: str = "hidden_act") -> nn.Module:
    try:
        return _CLIP_ACTS[name]()
    except KeyError:
        raise ValueError(f"{field_name}={name!r} is not supported; supported: {sorted(_CLIP_ACTS)}") from None


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            getattr(config, "num_channels", 3), self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=False
        )
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        n, _, h, w = pixel_values.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"image size {h}x{w} does not match the vision tower's {self.image_size}x{self.image_size}")
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [N, num_patches, D]
        cls = self.class_embedding.expand(n, 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.unsqueeze(0)


class CLIPAttention(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        q, k, v = (
            proj(x).view(n, s, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(n, s, self.embed_dim))


class CLIPMLP(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = get_clip_act(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))


def _normalize_index(index: int, num_states: int) -> int:
    resolved = index + num_states if index < 0 else index
    if not 0 <= resolved < num_states:
        raise ValueError(f"vision feature layer {index} is out of range for {num_states} hidden states")
    return resolved


class CLIPVisionTransformer(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def num_hidden_states(self) -> int:
        return len(self.encoder.layers) + 1

    def forward(self, pixel_values: torch.Tensor, feature_layer: int | list[int] | None = None) -> list[torch.Tensor]:
        """Hidden states [N, 1 + num_patches, D]: the embedding output, then each layer's output.

        With `feature_layer` (an index or list of indices into the full list, negative allowed)
        the layers after the deepest one requested are skipped.
        """
        layers = self.encoder.layers
        if feature_layer is None:
            last = len(layers)
        else:
            indices = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
            last = max(_normalize_index(i, self.num_hidden_states) for i in indices)
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        states = [hidden]
        for layer in layers[:last]:
            hidden = layer(hidden)
            states.append(hidden)
        return states


class CLIPVisionModel(nn.Module):
    """transformers' CLIPVisionModel without pooling: `forward` returns the list of hidden states."""

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config)

    @property
    def num_hidden_states(self) -> int:
        return self.vision_model.num_hidden_states

    def forward(self, pixel_values: torch.Tensor, feature_layer: int | list[int] | None = None) -> list[torch.Tensor]:
        return self.vision_model(pixel_values, feature_layer)

    def select_hidden_state(self, states: list[torch.Tensor], index: int) -> torch.Tensor:
        """states[index] with `index` counted over the full depth (so -2 works after an early stop)."""
        return states[_normalize_index(index, self.num_hidden_states)]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        from pagoda.model_executor.layers.linear import load_named_weight

        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            load_named_weight(params, name, tensor, loaded)
        return loaded
