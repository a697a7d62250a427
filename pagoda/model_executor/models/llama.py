"""Llama-family decoder (Llama 2/3/3.1/3.2, Mistral); Qwen2 and Qwen3 reuse its pieces.

Invariants:
- Weights are stored fused: `qkv_proj` holds [q | k | v] rows and `gate_up_proj` holds [gate | up];
  `load_weights` maps the checkpoint's separate q_proj/k_proj/v_proj and gate_proj/up_proj into them.
- The residual stream travels beside the hidden states: every norm after the first is the fused
  `norm(x, residual) -> (normed, x + residual)` form; `forward` returns the final norm's output.
  A layer's two norms may stay pending (RMSNorm.forward_pending) for the QKV and gate/up
  projections to compute inside their GEMV; the MLP's SiLU·mul is fused into gate/up the same way.
- With `tie_word_embeddings`, `lm_head` IS `model.embed_tokens` (one Parameter); a checkpoint's
  `lm_head.weight` is then ignored.
- Pipeline parallelism (models/pipeline.py): the model holds its stage's layers [start_layer, end_layer) and
  layer i reads and writes only `kv_caches[i - start_layer]`; the embedding is on the first stage (and the
  last, when tied), the final norm and LM head on the last. A stage that is not the last returns
  {"hidden_states", "residual"}; a later stage takes them as `intermediate_tensors`.
- Every constructor takes `quant_config` (None: unquantized) and `prefix`, its module name from the
  top-level model; linear layers get the checkpoint names ("model.layers.0.self_attn.qkv_proj"),
  and `packed_modules_mapping` names the checkpoint pieces of the fused ones.
- Subclasses change behaviour through the class attributes `attention_cls`, `layer_cls`,
  `model_cls` and `LlamaAttention.bias_flags` / `qk_norm`, never by copying forward code.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

from pagoda.attention.backend import AttentionBackend, AttentionMetadata
from pagoda.model_executor.layers.activation import SiluAndMul
from pagoda.model_executor.layers.attention import Attention
from pagoda.model_executor.layers.layernorm import RMSNorm
from pagoda.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    load_named_weight,
)
from pagoda.model_executor.layers.rotary import RotaryEmbedding, get_rope
from pagoda.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
    compute_logits,
)
from pagoda.model_executor.models.kv_spec import KVCacheSpec
from pagoda.model_executor.models.pipeline import MissingLayer, is_first_stage, is_last_stage, make_layers
from pagoda.model_executor.models.utils import maybe_prefix, packed_modules
from pagoda.model_executor.parallel_state import divide, get_tp_size
from pagoda.hf_utils import derive_max_model_len

logger = logging.getLogger(__name__)


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def num_kv_heads_of(config: Any) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


class LlamaMLP(nn.Module):
    def __init__(self, config: Any, quant_config=None, prefix: str = ""):
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias=bias,
                                                       quant_config=quant_config,
                                                       prefix=maybe_prefix(prefix, "gate_up_proj"))
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=bias,
                                           quant_config=quant_config, prefix=maybe_prefix(prefix, "down_proj"))
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act={config.hidden_act!r} is not supported for this model; only 'silu'")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.forward_silu_and_mul(x, self.act_fn))


class LlamaAttention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, attn_backend: AttentionBackend, rotary_emb: RotaryEmbedding,
                 quant_config=None, prefix: str = ""):
        super().__init__()
        tp_size = get_tp_size()
        self.head_dim = head_dim_of(config)
        total_heads, total_kv_heads = config.num_attention_heads, num_kv_heads_of(config)
        self.num_heads = divide(total_heads, tp_size, "num_attention_heads")
        self.num_kv_heads = max(1, total_kv_heads // tp_size)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        qkv_bias, o_bias = self.bias_flags(config)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_heads, total_kv_heads, bias=qkv_bias,
                                          quant_config=quant_config, prefix=maybe_prefix(prefix, "qkv_proj"))
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, config.hidden_size, bias=o_bias,
                                        quant_config=quant_config, prefix=maybe_prefix(prefix, "o_proj"))
        self.rotary_emb = rotary_emb  # shared by all layers: one cos/sin cache per model
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_kv_heads, layer_idx, attn_backend)

    @staticmethod
    def bias_flags(config: Any) -> tuple[bool, bool]:
        """(bias on qkv_proj, bias on o_proj)."""
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head normalization of q and k before rotary (none for Llama)."""
        return q, k

    def forward(self, positions, hidden_states, kv_cache, attn_metadata):
        qkv = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.qk_norm(q, k)
        # Rotary is applied by the attention backend (on the GPU fused with the KV-cache write).
        out = self.attn(q, k, v, kv_cache, attn_metadata, rotary_emb=self.rotary_emb, positions=positions)
        return self.o_proj(out)


class LlamaDecoderLayer(nn.Module):
    attention_cls = LlamaAttention
    mlp_cls = LlamaMLP

    def __init__(self, config: Any, layer_idx: int, attn_backend: AttentionBackend, rotary_emb: RotaryEmbedding,
                 quant_config=None, prefix: str = ""):
        super().__init__()
        self.self_attn = self.attention_cls(config, layer_idx, attn_backend, rotary_emb, quant_config,
                                            maybe_prefix(prefix, "self_attn"))
        self.mlp = self.mlp_cls(config, quant_config, maybe_prefix(prefix, "mlp"))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden_states, residual, kv_cache, attn_metadata):
        # At decode batch 1 on the GPU the norms stay pending: the next projection's GEMV computes them.
        hidden_states, residual = self.input_layernorm.forward_pending(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, kv_cache, attn_metadata)
        hidden_states, residual = self.post_attention_layernorm.forward_pending(hidden_states, residual)
        return self.mlp(hidden_states), residual


class LlamaModel(nn.Module):
    layer_cls = LlamaDecoderLayer

    def __init__(self, config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.is_last_stage = is_last_stage()
        tied = bool(getattr(config, "tie_word_embeddings", False))
        if is_first_stage() or (tied and self.is_last_stage):
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        else:
            self.embed_tokens = MissingLayer()
        rotary_emb = get_rope(head_dim_of(config), derive_max_model_len(config), config, is_neox_style=True)
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda i: self.layer_cls(config, i, attn_backend, rotary_emb, quant_config, maybe_prefix(prefix, f"layers.{i}")))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if self.is_last_stage else MissingLayer()

    def forward(self, input_ids, positions, kv_caches, attn_metadata, inputs_embeds=None, intermediate_tensors=None):
        if intermediate_tensors is not None:  # a later pipeline stage
            hidden_states, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        else:
            hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        start = self.start_layer
        for i in range(start, self.end_layer):
            hidden_states, residual = self.layers[i](positions, hidden_states, residual, kv_caches[i - start],
                                                     attn_metadata)
        if not self.is_last_stage:
            return {"hidden_states": hidden_states, "residual": residual}
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    model_cls = LlamaModel
    intermediate_names = ("hidden_states", "residual")  # what a pipeline stage hands to the next
    # (fused parameter, checkpoint piece, shard id)
    stacked_params_mapping = [
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    ]
    packed_modules_mapping = packed_modules(stacked_params_mapping)

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = hf_config
        self.model = self.model_cls(hf_config, attn_backend, quant_config, maybe_prefix(prefix, "model"))
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.intermediate_width = hf_config.hidden_size
        if not self.model.is_last_stage:
            self.lm_head = MissingLayer()
        elif self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        self.kv_cache_spec = KVCacheSpec(
            num_layers=self.model.end_layer - self.model.start_layer,
            num_kv_heads=self.model.layers[self.model.start_layer].self_attn.num_kv_heads,
            head_size=head_dim_of(hf_config),
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
        intermediate_tensors: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.model(input_ids, positions, kv_caches, attn_metadata, inputs_embeds=inputs_embeds,
                          intermediate_tensors=intermediate_tensors)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return compute_logits(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or "rotary_emb.original_inv_freq" in name:
                continue
            if self.tie_word_embeddings and name.startswith("lm_head."):
                continue
            for fused, piece, shard_id in self.stacked_params_mapping:
                if piece in name:
                    target = name.replace(piece, fused)
                    if target not in params:
                        continue
                    param = params[target]
                    param.weight_loader(param, tensor, shard_id)
                    loaded.add(target)
                    break
            else:
                load_named_weight(params, name, tensor, loaded)
        return loaded


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral is Llama's architecture; a sliding window is served as full attention (see registry)."""

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        window = getattr(hf_config, "sliding_window", None)
        if window and window < derive_max_model_len(hf_config):
            logger.warning(
                "sliding_window=%d is not implemented: full attention is used and the engine caps "
                "max_model_len at %d, where the two agree",
                window,
                window,
            )
        super().__init__(hf_config, attn_backend, quant_config, prefix)
