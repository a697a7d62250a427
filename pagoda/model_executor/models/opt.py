"""OPT (facebook/opt-*): learned positions, LayerNorm with biases, ReLU MLP.

Invariants:
- Learned position embeddings are indexed at position + 2 (OPT's offset; rows 0-1 are unused).
- `do_layer_norm_before` picks pre-norm (every size but 350m) or post-norm; the final LayerNorm
  exists only for pre-norm models without `_remove_final_layer_norm`.
- When `word_embed_proj_dim` differs from `hidden_size`, `project_in` maps embeddings up and
  `project_out` maps the final hidden states down; `forward` returns them after `project_out`, so
  `compute_logits` takes [N, word_embed_proj_dim].
- q/k/v are fused into `qkv_proj` at load time; checkpoints with or without the `model.` prefix load.
- Linear layers take `quant_config` and their module names as prefixes ("model.decoder.layers.0.fc1").
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend, AttentionMetadata
from pagoda.model_executor.layers.activation import get_act_fn
from pagoda.model_executor.layers.attention import Attention
from pagoda.model_executor.layers.layernorm import LayerNorm
from pagoda.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    default_weight_loader,
)
from pagoda.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
    compute_logits,
)
from pagoda.model_executor.models.kv_spec import KVCacheSpec
from pagoda.model_executor.models.pipeline import MissingLayer, is_first_stage, is_last_stage, make_layers
from pagoda.model_executor.models.utils import maybe_prefix, packed_modules
from pagoda.model_executor.parallel_state import divide, get_tp_size

POSITION_OFFSET = 2


class OPTLearnedPositionalEmbedding(VocabParallelEmbedding):
    def __init__(self, num_positions: int, embedding_dim: int):
        super().__init__(num_positions + POSITION_OFFSET, embedding_dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return super().forward(positions + POSITION_OFFSET)


class OPTAttention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        total_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // total_heads
        self.num_heads = divide(total_heads, get_tp_size(), "num_attention_heads")
        self.q_size = self.num_heads * self.head_dim
        bias = bool(getattr(config, "enable_bias", True))
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_heads, total_heads, bias=bias,
                                          quant_config=quant_config, prefix=maybe_prefix(prefix, "qkv_proj"))
        self.out_proj = RowParallelLinear(config.hidden_size, config.hidden_size, bias=bias,
                                          quant_config=quant_config, prefix=maybe_prefix(prefix, "out_proj"))
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_heads, layer_idx, attn_backend)

    def forward(self, hidden_states, kv_cache, attn_metadata):
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size] * 3, dim=-1)
        return self.out_proj(self.attn(q, k, v, kv_cache, attn_metadata))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.do_layer_norm_before = config.do_layer_norm_before
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        bias = bool(getattr(config, "enable_bias", True))
        self.self_attn = OPTAttention(config, layer_idx, attn_backend, quant_config, maybe_prefix(prefix, "self_attn"))
        self.self_attn_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine)
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.ffn_dim, bias=bias, quant_config=quant_config,
                                        prefix=maybe_prefix(prefix, "fc1"))
        self.activation_fn = get_act_fn(config.activation_function, "activation_function")
        self.fc2 = RowParallelLinear(config.ffn_dim, config.hidden_size, bias=bias, quant_config=quant_config,
                                     prefix=maybe_prefix(prefix, "fc2"))
        self.final_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine)

    def forward(self, hidden_states, kv_cache, attn_metadata):
        residual = hidden_states
        if self.do_layer_norm_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states = residual + self.self_attn(hidden_states, kv_cache, attn_metadata)
        if not self.do_layer_norm_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        residual = hidden_states
        if self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self.fc2(self.activation_fn(self.fc1(hidden_states)))
        if not self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class OPTDecoder(nn.Module):
    def __init__(self, config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        proj_dim = config.word_embed_proj_dim
        first, self.is_last_stage = is_first_stage(), is_last_stage()
        tied = bool(getattr(config, "tie_word_embeddings", True))
        self.embed_tokens = (VocabParallelEmbedding(config.vocab_size, proj_dim) if first or (tied and self.is_last_stage)
                             else MissingLayer())
        self.embed_positions = (OPTLearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
                                if first else MissingLayer())
        different = proj_dim != config.hidden_size
        self.project_in = ReplicatedLinear(proj_dim, config.hidden_size, bias=False, quant_config=quant_config,
                                           prefix=maybe_prefix(prefix, "project_in")) if different and first else None
        self.project_out = ReplicatedLinear(config.hidden_size, proj_dim, bias=False, quant_config=quant_config,
                                            prefix=maybe_prefix(prefix, "project_out")) if different and self.is_last_stage else None
        if (config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False)
                and self.is_last_stage):
            affine = getattr(config, "layer_norm_elementwise_affine", True)
            self.final_layer_norm = LayerNorm(config.hidden_size, elementwise_affine=affine)
        else:
            self.final_layer_norm = None
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda i: OPTDecoderLayer(config, i, attn_backend, quant_config, maybe_prefix(prefix, f"layers.{i}")))

    def forward(self, input_ids, positions, kv_caches, attn_metadata, intermediate_tensors=None):
        if intermediate_tensors is not None:  # a later pipeline stage
            hidden_states = intermediate_tensors["hidden_states"]
        else:
            embeds = self.embed_tokens(input_ids)
            if self.project_in is not None:
                embeds = self.project_in(embeds)
            hidden_states = embeds + self.embed_positions(positions)
        for i in range(self.start_layer, self.end_layer):
            hidden_states = self.layers[i](hidden_states, kv_caches[i - self.start_layer], attn_metadata)
        if not self.is_last_stage:
            return {"hidden_states": hidden_states}
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        return hidden_states


class OPTModel(nn.Module):
    def __init__(self, config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.decoder = OPTDecoder(config, attn_backend, quant_config, maybe_prefix(prefix, "decoder"))

    def forward(self, input_ids, positions, kv_caches, attn_metadata, intermediate_tensors=None):
        return self.decoder(input_ids, positions, kv_caches, attn_metadata, intermediate_tensors)


class OPTForCausalLM(nn.Module):
    intermediate_names = ("hidden_states",)  # what a pipeline stage hands to the next
    stacked_params_mapping = [(".qkv_proj", ".q_proj", "q"), (".qkv_proj", ".k_proj", "k"), (".qkv_proj", ".v_proj", "v")]
    packed_modules_mapping = packed_modules(stacked_params_mapping)

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = hf_config
        self.model = OPTModel(hf_config, attn_backend, quant_config, maybe_prefix(prefix, "model"))
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", True))
        decoder = self.model.decoder
        if not decoder.is_last_stage:
            self.lm_head = MissingLayer()
        elif self.tie_word_embeddings:
            self.lm_head = decoder.embed_tokens
        else:
            self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.word_embed_proj_dim)
        self.intermediate_width = hf_config.hidden_size
        self.kv_cache_spec = KVCacheSpec(
            num_layers=decoder.end_layer - decoder.start_layer,
            num_kv_heads=decoder.layers[decoder.start_layer].self_attn.num_heads,
            head_size=hf_config.hidden_size // hf_config.num_attention_heads,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.model(input_ids, positions, kv_caches, attn_metadata, intermediate_tensors)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return compute_logits(self.lm_head, hidden_states)

    @staticmethod
    def module_name(checkpoint_name: str) -> str:
        """facebook/opt-* checkpoints name modules "decoder.*"; this model "model.decoder.*"."""
        return checkpoint_name if checkpoint_name.startswith(("model.", "lm_head")) else "model." + checkpoint_name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = self.module_name(name)
            if self.tie_word_embeddings and name.startswith("lm_head."):
                continue
            shard_id = None
            for fused, piece, sid in self.stacked_params_mapping:
                if piece in name:
                    name, shard_id = name.replace(piece, fused), sid
                    break
            if name not in params:
                continue
            param = params[name]
            loader = getattr(param, "weight_loader", default_weight_loader)
            loader(param, tensor) if shard_id is None else loader(param, tensor, shard_id)
            loaded.add(name)
        return loaded
