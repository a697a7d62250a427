"""GPT-2 (GPT2LMHeadModel): learned absolute positions, pre-LayerNorm blocks, gelu_new MLP.

Invariants:
- GPT-2 checkpoints store Conv1D weights as [input, output], the transpose of nn.Linear's layout;
  `load_weights` transposes `c_attn`, `c_proj` and `c_fc` weights before loading them.
- `c_attn` is the fused [q | k | v] projection already; it loads through QKVParallelLinear's
  no-shard-id path, which splits it by head counts (so tensor parallelism shards it correctly).
- The causal-mask buffers old checkpoints carry (`attn.bias`, `attn.masked_bias`) are skipped;
  names with or without the `transformer.` prefix load. `lm_head` is always `wte`.
- Linear layers take `quant_config` and their module names as prefixes ("transformer.h.0.attn.c_attn");
  `c_attn` is fused in the checkpoint too, so it has no pieces (empty `packed_modules_mapping`).
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
    RowParallelLinear,
    load_named_weight,
)
from pagoda.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding, compute_logits
from pagoda.model_executor.models.kv_spec import KVCacheSpec
from pagoda.model_executor.models.pipeline import MissingLayer, is_first_stage, is_last_stage, make_layers
from pagoda.model_executor.models.utils import maybe_prefix
from pagoda.model_executor.parallel_state import divide, get_tp_size

_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        hidden, total_heads = config.n_embd, config.n_head
        self.head_dim = hidden // total_heads
        self.num_heads = divide(total_heads, get_tp_size(), "n_head")
        self.q_size = self.num_heads * self.head_dim
        scale = self.head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer_idx + 1
        self.c_attn = QKVParallelLinear(hidden, self.head_dim, total_heads, total_heads, bias=True,
                                        quant_config=quant_config, prefix=maybe_prefix(prefix, "c_attn"))
        self.c_proj = RowParallelLinear(hidden, hidden, bias=True, quant_config=quant_config,
                                        prefix=maybe_prefix(prefix, "c_proj"))
        self.attn = Attention(self.num_heads, self.head_dim, scale, self.num_heads, layer_idx, attn_backend)

    def forward(self, hidden_states, kv_cache, attn_metadata):
        q, k, v = self.c_attn(hidden_states).split([self.q_size] * 3, dim=-1)
        return self.c_proj(self.attn(q, k, v, kv_cache, attn_metadata))


class GPT2MLP(nn.Module):
    def __init__(self, config: Any, quant_config=None, prefix: str = ""):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = ColumnParallelLinear(config.n_embd, inner, bias=True, quant_config=quant_config,
                                         prefix=maybe_prefix(prefix, "c_fc"))
        self.act = get_act_fn(config.activation_function, "activation_function")
        self.c_proj = RowParallelLinear(inner, config.n_embd, bias=True, quant_config=quant_config,
                                        prefix=maybe_prefix(prefix, "c_proj"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config: Any, layer_idx: int, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.n_embd, eps=eps)
        self.attn = GPT2Attention(config, layer_idx, attn_backend, quant_config, maybe_prefix(prefix, "attn"))
        self.ln_2 = LayerNorm(config.n_embd, eps=eps)
        self.mlp = GPT2MLP(config, quant_config, maybe_prefix(prefix, "mlp"))

    def forward(self, hidden_states, kv_cache, attn_metadata):
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), kv_cache, attn_metadata)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPT2Model(nn.Module):
    def __init__(self, config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        first, self.is_last_stage = is_first_stage(), is_last_stage()
        # wte is also the LM head: the first stage embeds with it, the last computes logits with it
        self.wte = VocabParallelEmbedding(config.vocab_size, config.n_embd) if first or self.is_last_stage else MissingLayer()
        self.wpe = VocabParallelEmbedding(config.n_positions, config.n_embd) if first else MissingLayer()
        self.start_layer, self.end_layer, self.h = make_layers(
            config.n_layer, lambda i: GPT2Block(config, i, attn_backend, quant_config, maybe_prefix(prefix, f"h.{i}")))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon) if self.is_last_stage else MissingLayer()

    def forward(self, input_ids, positions, kv_caches, attn_metadata, intermediate_tensors=None):
        if intermediate_tensors is not None:  # a later pipeline stage
            hidden_states = intermediate_tensors["hidden_states"]
        else:
            hidden_states = self.wte(input_ids) + self.wpe(positions)
        for i in range(self.start_layer, self.end_layer):
            hidden_states = self.h[i](hidden_states, kv_caches[i - self.start_layer], attn_metadata)
        if not self.is_last_stage:
            return {"hidden_states": hidden_states}
        return self.ln_f(hidden_states)


class GPT2LMHeadModel(nn.Module):
    packed_modules_mapping: dict[str, list[str]] = {}
    intermediate_names = ("hidden_states",)  # what a pipeline stage hands to the next

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
        super().__init__()
        self.config = hf_config
        self.transformer = GPT2Model(hf_config, attn_backend, quant_config, maybe_prefix(prefix, "transformer"))
        self.lm_head = self.transformer.wte if self.transformer.is_last_stage else MissingLayer()
        self.intermediate_width = hf_config.n_embd
        transformer = self.transformer
        self.kv_cache_spec = KVCacheSpec(
            num_layers=transformer.end_layer - transformer.start_layer,
            num_kv_heads=transformer.h[transformer.start_layer].attn.num_heads,
            head_size=hf_config.n_embd // hf_config.n_head,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.transformer(input_ids, positions, kv_caches, attn_metadata, intermediate_tensors)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return compute_logits(self.lm_head, hidden_states)

    @staticmethod
    def module_name(checkpoint_name: str) -> str:
        return checkpoint_name if checkpoint_name.startswith(("transformer.", "lm_head")) else "transformer." + checkpoint_name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith("lm_head."):
                continue  # tied to wte
            name = self.module_name(name)
            if name not in params:
                continue  # attn.bias / attn.masked_bias mask buffers
            if name.endswith(_CONV1D):
                tensor = tensor.t()
            load_named_weight(params, name, tensor, loaded)
        return loaded
