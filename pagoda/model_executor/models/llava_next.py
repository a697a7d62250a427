"""LLaVA-NeXT / v1.6 (transformers' `LlavaNextForConditionalGeneration`): LLaVA-1.5 plus any-resolution tiling.

Invariants:
- Everything but the image features is LLaVA-1.5's (`LlavaForConditionalGeneration`, subclassed): the CLIP
  tower, projector, text model, forward / compute_logits / kv_cache_spec, and load_weights' layouts; the one
  extra parameter `image_newline` [text_hidden] is `image_newline` in hub / saved checkpoints and
  `model.image_newline` under transformers 5 module names.
- `embed_images(pixel_values [N, P, 3, S, S], image_sizes [N, 2] (height, width))` returns one
  [num_tokens_i, text_hidden] tensor per image: transformers 5.24's `LlavaNextModel.get_image_features`
  (which packs): image i's first `num_patches(image_sizes[i])` tiles (the rest is the processor's batch
  padding) go through the tower, feature layer / strategy selection and projector as LLaVA-1.5; then the
  base tile's features, followed by the grid tiles' features laid out as one feature map, unpadded to the
  image's aspect ratio, with `image_newline` appended to every row. num_tokens_i is the number of image
  tokens LlavaNextProcessor expands image i into (given num_additional_image_tokens = 1 for CLIP's CLS).
- Grid selection is transformers' `select_best_resolution` over `image_grid_pinpoints` ((height, width)
  pairs), in plain Python on the sizes, so it agrees with the processor bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend
from pagoda.model_executor.models.llava import LlavaForConditionalGeneration

_DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def select_best_resolution(original_size: tuple[int, int], possible_resolutions: list) -> tuple[int, int]:
    """transformers' `select_best_resolution`: the (height, width) pinpoint that keeps the most of the image
    at the least wasted area."""
    original_height, original_width = original_size
    best_fit = None
    max_effective, min_wasted = 0, float("inf")
    for height, width in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted = effective, wasted
            best_fit = (height, width)
    return best_fit


def get_anyres_image_grid_shape(image_size, grid_pinpoints: list, tile_size: int) -> tuple[int, int]:
    """(rows, cols) of tiles the image is cut into."""
    height, width = select_best_resolution(image_size, grid_pinpoints)
    return height // tile_size, width // tile_size


def image_size_to_num_patches(image_size, grid_pinpoints: list, tile_size: int) -> int:
    """Tiles of one image including the base (whole-image) tile, as transformers counts them."""
    height, width = select_best_resolution(image_size, grid_pinpoints)
    return len(range(0, height, tile_size)) * len(range(0, width, tile_size)) + 1


def unpad_image(tensor: torch.Tensor, original_size) -> torch.Tensor:
    """[C, h, w] feature map -> the part covering the image of `original_size` (height, width)."""
    original_height, original_width = original_size
    current_height, current_width = tensor.shape[1:]
    if original_width / original_height > current_width / current_height:
        new_height = int(round(original_height * (current_width / original_width), 7))
        padding = (current_height - new_height) // 2
        return tensor[:, padding : current_height - padding, :]
    new_width = int(round(original_width * (current_height / original_height), 7))
    padding = (current_width - new_width) // 2
    return tensor[:, :, padding : current_width - padding]


class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    supports_images = True

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__(hf_config, attn_backend, quant_config, prefix)
        pinpoints = getattr(hf_config, "image_grid_pinpoints", None)
        self.image_grid_pinpoints = [list(p) for p in (pinpoints if pinpoints is not None else _DEFAULT_PINPOINTS)]
        text_hidden = hf_config.text_config.hidden_size
        self.image_newline = nn.Parameter(torch.empty(text_hidden))
        # Tokens per image depend on its size (see embed_images); there is no fixed count.
        self.num_image_tokens = None

    # ---- images -----------------------------------------------------------------------------

    def num_patches(self, image_size) -> int:
        return image_size_to_num_patches(image_size, self.image_grid_pinpoints, self.config.vision_config.image_size)

    def _pack(self, features: torch.Tensor, image_size) -> torch.Tensor:
        """[tiles, tokens, H] of one image -> [num_tokens, H] (transformers' pack_image_features)."""
        newline = self.image_newline
        if features.shape[0] <= 1:
            return torch.cat((features[0], newline[None].to(features)), dim=0)
        vision = self.config.vision_config
        base, grid = features[0], features[1:]
        side = vision.image_size // vision.patch_size
        rows, cols = get_anyres_image_grid_shape(image_size, self.image_grid_pinpoints, vision.image_size)
        grid = grid.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
        grid = grid.flatten(1, 2).flatten(2, 3)  # [H, rows*side, cols*side]
        grid = unpad_image(grid, image_size)
        grid = torch.cat((grid, newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid)), dim=-1)
        grid = grid.flatten(1, 2).transpose(0, 1)
        return torch.cat((base, grid), dim=0)

    def embed_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values [N, P, 3, S, S] (tiles, padded to the batch's most), image_sizes [N, 2] (height, width)
        -> one [num_tokens_i, text_hidden] tensor per image."""
        sizes = [tuple(int(v) for v in size) for size in torch.as_tensor(image_sizes).reshape(-1, 2).tolist()]
        counts = [self.num_patches(size) for size in sizes]
        if pixel_values.dim() == 5:
            tiles = torch.cat([pixels[:n] for pixels, n in zip(pixel_values, counts)], dim=0)
        elif pixel_values.dim() == 4:  # already the concatenated tiles of all images
            tiles = pixel_values
        else:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected 4 or 5 dimensions")
        features = super().embed_images(tiles)  # [sum(counts), tokens, H]
        return [self._pack(f, size) for f, size in zip(torch.split(features, counts, dim=0), sizes)]

    # ---- weights ----------------------------------------------------------------------------

    @staticmethod
    def _route(name: str) -> tuple[str, str]:
        if name in ("image_newline", "model.image_newline"):
            return "own", "image_newline"
        return LlavaForConditionalGeneration._route(name)
