"""Qwen2.5-VL (transformers' `Qwen2_5_VLForConditionalGeneration`), images only: a windowed-attention
ViT with 2-D rotary, a patch merger, and the Qwen2 decoder with multimodal rotary (M-RoPE).

Invariants:
- `embed_images(pixel_values [N, P, D], image_grid_thw [N, 3])` equals transformers'
  `get_image_features` split per image: each image's P rows are the processor's flattened patches
  (D = in_channels·temporal_patch_size·patch_size², merge blocks of spatial_merge_size² consecutive
  rows) and give P // spatial_merge_size² feature rows. The patch Conv3d (kernel = stride) is the
  Linear it equals; its checkpoint weight [out, C, T, p, p] loads flattened.
- Vision attention is plain torch and never touches the KV cache: inside the encoder the merge
  blocks are reordered window by window (windows of window_size // patch_size // merge blocks a
  side, per frame, clipped at the image edge); blocks in `fullatt_block_indexes` attend over a
  whole frame, the others within a window; segments of equal length run as one batched SDPA call.
  The merger's output is put back in the processor's order.
- `forward(positions)` takes int64 [T] positions (plain rotary, exactly Qwen2's path: the decode /
  CUDA-graph path) or [3, T] (temporal, height, width) for M-RoPE. For [3, T] one cos/sin table
  [T, rotary_dim] is built per call from the model's own cache, rotary frequency j reading the row
  of its `mrope_section`; the attention layers get positions arange(T) and that table, handed
  down the layers as an argument (no state on modules between calls).
- `mrope_positions` is transformers' `get_rope_index` for a prompt whose images are runs of
  `image_token_id` (t·h·w // merge² tokens per image, in order); a later token at sequence
  position p has all three positions p + delta.
- `load_weights` accepts the layout save_pretrained writes (also the hub's: `visual.*`, `model.*`,
  `lm_head.*`) and transformers 5 module names (`model.visual.*`, `model.language_model.*`); it
  returns this module's full parameter names. The top-level `tie_word_embeddings` decides tying.
- With a `quant_config` only the text model is quantized (prefixes "language_model.model.layers.N...."),
  the ViT stays unquantized; `module_name` maps checkpoint module names to this module's (skip lists).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pagoda.attention.backend import AttentionBackend, AttentionMetadata
from pagoda.kernels.rope_cache import rope_inv_freq
from pagoda.model_executor.layers.activation import get_act_fn
from pagoda.model_executor.layers.layernorm import RMSNorm
from pagoda.model_executor.layers.linear import default_weight_loader, set_weight_attrs
from pagoda.model_executor.layers.rotary import RotaryEmbedding, apply_rotary_emb, rope_settings
from pagoda.model_executor.models.qwen2 import Qwen2Attention, Qwen2DecoderLayer, Qwen2ForCausalLM, Qwen2Model
from pagoda.model_executor.models.utils import load_routed_weights, maybe_prefix

# ---- vision encoder -----------------------------------------------------------------------------


def _load_patch_weight(param: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() == 5 and weight.shape[1:].numel() == param.shape[1]:
        weight = weight.flatten(1)  # Conv3d [out, C, T, p, p] -> Linear [out, C·T·p·p]
    default_weight_loader(param, weight)


class Qwen2_5_VisionPatchEmbed(nn.Module):
    def __init__(self, vc: Any):
        super().__init__()
        in_channels = getattr(vc, "in_channels", None) or getattr(vc, "in_chans", 3)
        self.proj = nn.Linear(in_channels * vc.temporal_patch_size * vc.patch_size**2, vc.hidden_size, bias=False)
        set_weight_attrs(self.proj.weight, {"weight_loader": _load_patch_weight})

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.proj(rows.to(self.proj.weight.dtype))


def _segment_groups(bounds: Sequence[int], device: torch.device) -> list[torch.Tensor]:
    """Row indices [n, L] of the segments [bounds[i], bounds[i+1]), one tensor per distinct length L."""
    starts, lengths = np.asarray(bounds[:-1]), np.diff(bounds)
    groups = []
    for length in np.unique(lengths[lengths > 0]):
        rows = starts[lengths == length][:, None] + np.arange(length)
        groups.append(torch.from_numpy(rows).to(device))
    return groups


def _segment_attention(q, k, v, groups: list[torch.Tensor], scale: float) -> torch.Tensor:
    """Bidirectional attention of q/k/v [S, H, D] within each segment; segments never interact."""
    out = torch.empty_like(q)
    for rows in groups:
        qs, ks, vs = (x[rows].transpose(1, 2) for x in (q, k, v))  # [n, H, L, D]
        out[rows] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(1, 2)
    return out


class Qwen2_5_VisionAttention(nn.Module):
    def __init__(self, vc: Any):
        super().__init__()
        self.num_heads = vc.num_heads
        self.head_dim = vc.hidden_size // vc.num_heads
        self.qkv = nn.Linear(vc.hidden_size, 3 * vc.hidden_size, bias=True)
        self.proj = nn.Linear(vc.hidden_size, vc.hidden_size)

    def forward(self, x, cos, sin, groups):
        s = x.shape[0]
        q, k, v = self.qkv(x).view(s, 3, self.num_heads, self.head_dim).unbind(1)
        # transformers rotates in fp32 whatever the model dtype
        q, k = (apply_rotary_emb(t.float(), cos, sin, is_neox_style=True).to(v.dtype) for t in (q, k))
        out = _segment_attention(q, k, v, groups, self.head_dim**-0.5)
        return self.proj(out.reshape(s, -1))


class Qwen2_5_VisionMLP(nn.Module):
    def __init__(self, vc: Any):
        super().__init__()
        self.gate_proj = nn.Linear(vc.hidden_size, vc.intermediate_size, bias=True)
        self.up_proj = nn.Linear(vc.hidden_size, vc.intermediate_size, bias=True)
        self.down_proj = nn.Linear(vc.intermediate_size, vc.hidden_size, bias=True)
        self.act_fn = get_act_fn(vc.hidden_act, "vision_config.hidden_act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Qwen2_5_VisionBlock(nn.Module):
    def __init__(self, vc: Any):
        super().__init__()
        self.norm1 = RMSNorm(vc.hidden_size, eps=1e-6)
        self.norm2 = RMSNorm(vc.hidden_size, eps=1e-6)
        self.attn = Qwen2_5_VisionAttention(vc)
        self.mlp = Qwen2_5_VisionMLP(vc)

    def forward(self, x, cos, sin, groups):
        x = x + self.attn(self.norm1(x), cos, sin, groups)
        return x + self.mlp(self.norm2(x))


class Qwen2_5_VisionPatchMerger(nn.Module):
    """RMSNorm per patch, then an MLP over each merge block's spatial_merge_size² patches concatenated."""

    def __init__(self, out_dim: int, context_dim: int, merge: int):
        super().__init__()
        self.unit_dim = context_dim * merge**2
        self.ln_q = RMSNorm(context_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.unit_dim, self.unit_dim), nn.GELU(), nn.Linear(self.unit_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.unit_dim))


@dataclass
class _VisionLayout:
    """Host-side plan of one encoder call over images with grids (t, h, w) in patches."""

    unit_order: np.ndarray  # merge blocks in window order (indices in the processor's order)
    patch_order: np.ndarray  # the same order over patches
    hw: np.ndarray  # [S, 2] (h, w) patch coordinates, processor order
    window_bounds: list[int]  # segment bounds (in window-ordered patches) of the windows
    frame_bounds: list[int]  # ... of the frames (full attention)


def _block_major(a: np.ndarray, merge: int) -> np.ndarray:
    """[h, w] -> flat in the processor's patch order: merge block (row, col), then its patches row-major."""
    h, w = a.shape
    return a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)


def _vision_layout(grids: list[tuple[int, int, int]], merge: int, window: int) -> _VisionLayout:
    unit = merge * merge
    order, hw, window_bounds, frame_bounds = [], [], [0], [0]
    offset = 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        hw.append(np.tile(np.stack([_block_major(hh, merge), _block_major(ww, merge)], axis=-1), (t, 1)))
        units = offset + np.arange(t * gh * gw).reshape(t, gh, gw)
        for frame in units:
            for r in range(0, gh, window):
                for c in range(0, gw, window):
                    cell = frame[r : r + window, c : c + window].reshape(-1)
                    order.append(cell)
                    window_bounds.append(window_bounds[-1] + cell.size * unit)
            frame_bounds.append(frame_bounds[-1] + gh * gw * unit)
        offset += t * gh * gw
    unit_order = np.concatenate(order)
    patch_order = (unit_order[:, None] * unit + np.arange(unit)).reshape(-1)
    return _VisionLayout(unit_order, patch_order, np.concatenate(hw), window_bounds, frame_bounds)


class Qwen2_5_VisionTransformer(nn.Module):
    """Patch embedding, blocks and merger; names mirror transformers' `visual.*` modules."""

    def __init__(self, vc: Any):
        super().__init__()
        self.spatial_merge_size = vc.spatial_merge_size
        self.window_merge_blocks = vc.window_size // vc.spatial_merge_size // vc.patch_size
        if self.window_merge_blocks < 1:
            raise ValueError(
                f"vision_config.window_size={vc.window_size} must be at least patch_size·spatial_merge_size="
                f"{vc.patch_size * vc.spatial_merge_size}"
            )
        self.fullatt_block_indexes = set(vc.fullatt_block_indexes)
        head_dim = vc.hidden_size // vc.num_heads
        if head_dim % 4:
            raise ValueError(f"vision head size {head_dim} must be a multiple of 4 (2-D rotary over h and w)")
        theta = float((getattr(vc, "rope_parameters", None) or {}).get("rope_theta", 10000.0))
        # head_dim // 4 frequencies per axis: [h angles | w angles] fill the rotary half dims
        self.register_buffer("inv_freq", rope_inv_freq(theta, head_dim // 2), persistent=False)
        self.patch_embed = Qwen2_5_VisionPatchEmbed(vc)
        self.blocks = nn.ModuleList(Qwen2_5_VisionBlock(vc) for _ in range(vc.depth))
        self.merger = Qwen2_5_VisionPatchMerger(vc.out_hidden_size, vc.hidden_size, vc.spatial_merge_size)

    def forward(self, rows: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        """Patch rows [S, D] of the images with `grids`, concatenated -> features [S // merge², out_hidden]."""
        device = rows.device
        layout = _vision_layout(grids, self.spatial_merge_size, self.window_merge_blocks)
        if rows.shape[0] != layout.patch_order.size:
            raise ValueError(f"{rows.shape[0]} patch rows do not match image_grid_thw {grids} ({layout.patch_order.size})")
        patch_order = torch.from_numpy(layout.patch_order).to(device)
        x = self.patch_embed(rows)[patch_order]
        hw = torch.from_numpy(layout.hw).to(device)[patch_order].float()
        angles = (hw[:, :, None] * self.inv_freq.float()).flatten(1)  # [S, head_dim // 2]
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]
        windows = _segment_groups(layout.window_bounds, device)
        frames = _segment_groups(layout.frame_bounds, device)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames if i in self.fullatt_block_indexes else windows)
        merged = self.merger(x)
        out = torch.empty_like(merged)
        out[torch.from_numpy(layout.unit_order).to(device)] = merged
        return out


# ---- text decoder with M-RoPE --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MRopeStepTable:
    """One forward's M-RoPE cos/sin rows, in the place of a RotaryEmbedding: row t belongs to token t,
    so the attention layer indexes it with positions arange(T). Its unfused rotation is
    RotaryEmbedding's own code, so the numerics are exactly the 1-D path's."""

    cos_sin_cache: torch.Tensor  # fp32 [T, rotary_dim] = [cos half | sin half]
    head_size: int
    rotary_dim: int
    is_neox_style: bool

    forward = RotaryEmbedding.forward
    _rotate = RotaryEmbedding._rotate
    __call__ = RotaryEmbedding.forward


class Qwen2_5_VLTextAttention(Qwen2Attention):
    def forward(self, positions, hidden_states, kv_cache, attn_metadata, rotary_emb=None):
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.qk_norm(q, k)
        rotary_emb = self.rotary_emb if rotary_emb is None else rotary_emb
        out = self.attn(q, k, v, kv_cache, attn_metadata, rotary_emb=rotary_emb, positions=positions)
        return self.o_proj(out)


class Qwen2_5_VLTextDecoderLayer(Qwen2DecoderLayer):
    attention_cls = Qwen2_5_VLTextAttention

    def forward(self, positions, hidden_states, residual, kv_cache, attn_metadata, rotary_emb=None):
        hidden_states, residual = self.input_layernorm.forward_pending(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, kv_cache, attn_metadata, rotary_emb)
        hidden_states, residual = self.post_attention_layernorm.forward_pending(hidden_states, residual)
        return self.mlp(hidden_states), residual


class Qwen2_5_VLTextModel(Qwen2Model):
    layer_cls = Qwen2_5_VLTextDecoderLayer

    def __init__(self, config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__(config, attn_backend, quant_config, prefix)
        rope = self.layers[0].self_attn.rotary_emb
        half = rope.rotary_dim // 2
        section = list(rope_settings(config).get("mrope_section") or [16, 24, 24])  # transformers' default
        if sum(section) != half:
            raise ValueError(f"rope mrope_section={section} must sum to rotary_dim // 2 = {half}")
        # cache column c of [cos half | sin half] reads position row mrope_row[c] (section i -> row i % 3)
        rows = np.repeat(np.arange(len(section)) % 3, section)  # numpy: the model may be built on the meta device
        self.register_buffer("mrope_row", torch.tensor(np.concatenate([rows, rows]), dtype=torch.int64),
                             persistent=False)

    def mrope_table(self, positions: torch.Tensor) -> MRopeStepTable:
        """The M-RoPE rows of positions [3, T], gathered from the 1-D cos/sin cache."""
        rope = self.layers[0].self_attn.rotary_emb
        index = positions.index_select(0, self.mrope_row).t()  # [T, rotary_dim]
        table = rope.cos_sin_cache.gather(0, index)
        return MRopeStepTable(table, rope.head_size, rope.rotary_dim, rope.is_neox_style)

    def forward(self, input_ids, positions, kv_caches, attn_metadata, inputs_embeds=None, intermediate_tensors=None):
        if intermediate_tensors is not None:
            raise NotImplementedError("pipeline parallelism for Qwen2.5-VL is not supported yet")
        rotary_emb = None
        if positions.dim() == 2:
            rotary_emb = self.mrope_table(positions)
            positions = torch.arange(positions.shape[1], device=positions.device)
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        for i, layer in enumerate(self.layers):
            hidden_states, residual = layer(positions, hidden_states, residual, kv_caches[i], attn_metadata, rotary_emb)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class Qwen2_5_VLTextForCausalLM(Qwen2ForCausalLM):
    model_cls = Qwen2_5_VLTextModel


# ---- M-RoPE positions of a prompt ----------------------------------------------------------------


def mrope_positions(
    hf_config: Any, token_ids: Sequence[int] | np.ndarray, image_grid_thw: Sequence[Sequence[int]] | np.ndarray
) -> tuple[np.ndarray, int]:
    """(positions int64 [3, len(token_ids)], delta) as transformers' get_rope_index (images only).

    Text tokens get equal rows counting on from the previous position; image i's tokens (a run of
    image_token_id, t·h·w // merge² long; one run may hold consecutive images) get (t, h, w) merge-grid
    coordinates offset by the position where it starts, and the text after it starts at that offset +
    max(h, w) // merge. delta = max position + 1 - len(token_ids).
    """
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    grids = [tuple(int(x) for x in g) for g in np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)]
    merge = hf_config.vision_config.spatial_merge_size
    is_image = ids == hf_config.image_token_id
    n = len(ids)
    bounds = [0, *(np.flatnonzero(np.diff(is_image.astype(np.int8))) + 1).tolist(), n]
    pieces, pos, next_grid = [], 0, 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        if start == end:
            continue
        if not is_image[start]:
            pieces.append(np.broadcast_to(np.arange(pos, pos + end - start), (3, end - start)))
            pos += end - start
            continue
        while start < end:
            if next_grid == len(grids):
                raise ValueError(f"more image tokens than the {len(grids)} images of image_grid_thw account for")
            t, h, w = grids[next_grid]
            next_grid += 1
            count = t * (h // merge) * (w // merge)
            if start + count > end:
                raise ValueError(f"image {next_grid - 1} (grid {(t, h, w)}) needs {count} image tokens; "
                                 f"its run has {end - start}")
            grid = np.meshgrid(np.arange(t), np.arange(h // merge), np.arange(w // merge), indexing="ij")
            pieces.append(np.stack(grid).reshape(3, -1) + pos)
            pos += max(h, w) // merge
            start += count
    if next_grid != len(grids):
        raise ValueError(f"image_grid_thw has {len(grids)} images but the prompt has image tokens for {next_grid}")
    positions = np.concatenate(pieces, axis=1).astype(np.int64) if pieces else np.zeros((3, 0), np.int64)
    delta = int(positions.max()) + 1 - n if n else 0
    return positions, delta


# ---- the model -----------------------------------------------------------------------------------


class Qwen2_5_VLForConditionalGeneration(nn.Module):
    supports_images = True
    uses_mrope = True
    mrope_positions = staticmethod(mrope_positions)
    packed_modules_mapping = Qwen2ForCausalLM.packed_modules_mapping

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = hf_config
        vision_config = hf_config.vision_config
        # the text config has no tie flag of its own: the top-level one is the model's (as in transformers)
        text_config = copy.copy(getattr(hf_config, "text_config", hf_config))
        text_config.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if vision_config.out_hidden_size != text_config.hidden_size:
            raise ValueError(
                f"vision_config.out_hidden_size={vision_config.out_hidden_size} must equal the text "
                f"hidden_size={text_config.hidden_size}"
            )
        self.image_token_id = hf_config.image_token_id
        self.spatial_merge_size = vision_config.spatial_merge_size
        self.visual = Qwen2_5_VisionTransformer(vision_config)
        self.language_model = Qwen2_5_VLTextForCausalLM(text_config, attn_backend, quant_config,
                                                        maybe_prefix(prefix, "language_model"))
        self.kv_cache_spec = self.language_model.kv_cache_spec

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [T, H] of the text model."""
        return self.language_model.model.embed_tokens(input_ids)

    def embed_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """[N, P, D] patch rows and [N, 3] grids -> [N, P // merge², text_hidden] (one encoder call)."""
        n, num_patches, _ = pixel_values.shape
        grids = [tuple(g) for g in image_grid_thw.reshape(n, 3).tolist()]
        features = self.visual(pixel_values.reshape(n * num_patches, -1), grids)
        return features.view(n, num_patches // self.spatial_merge_size**2, -1)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """positions: int64 [T] (plain rotary) or [3, T] (M-RoPE temporal/height/width rows)."""
        return self.language_model(input_ids, positions, kv_caches, attn_metadata, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden_states)

    @staticmethod
    def _route(name: str) -> tuple[str, str]:
        """("text", name in the text model) | ("own", name in this module) | ("skip", name)."""
        if name.startswith("model.visual."):
            return "own", name[len("model.") :]
        if name.startswith("visual."):
            return "own", name
        if name.startswith("model.language_model."):  # transformers 5 module names
            return "text", "model." + name[len("model.language_model.") :]
        if name.startswith("language_model.model.") or name.startswith("language_model.lm_head."):
            return "text", name[len("language_model.") :]
        if name.startswith("model.") or name.startswith("lm_head."):  # save_pretrained / hub layout
            return "text", name
        return "skip", name

    @classmethod
    def module_name(cls, checkpoint_name: str) -> str:
        """This module's name for a checkpoint module (or tensor) name of any layout `_route` reads."""
        kind, target = cls._route(checkpoint_name)
        return "language_model." + target if kind == "text" else target

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_routed_weights(self, weights)
