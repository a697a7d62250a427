"""BERT encoder (BertModel, e.g. sentence-transformers' all-MiniLM-L6-v2) for embeddings.

BERT is bidirectional: every token of a prompt attends to every other token of the same prompt, so
it keeps no KV cache (kv_cache_spec.num_layers == 0) and a prompt must be in one step whole (the
scheduler never chunks pooling requests). `forward` returns the last encoder layer's hidden states
[T, H]; the runner's Pooler turns them into one vector per prompt (CLS or MEAN, per the
sentence-transformers config).

Invariants:
- Attention is computed here, in torch, over the flat batch: request i's tokens are rows
  query_start_loc_cpu[i]:query_start_loc_cpu[i+1] and attend only to each other (no causal mask).
  Several requests are padded to the longest one for one batched SDPA call, with a key mask.
- Positions are the runner's positions (0..L-1 per prompt); token type ids are all 0.
- q/k/v are fused into `qkv_proj` at load time; checkpoints with a `bert.` prefix (BertFor*) load
  too, and heads of other tasks (pooler, cls) are skipped.
- Linear layers take `quant_config` and their module names as prefixes
  ("encoder.layer.0.attention.self.qkv_proj", pieces query / key / value).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.attention.backend import AttentionBackend, AttentionMetadata
from pagoda.model_executor.layers.activation import get_act_fn
from pagoda.model_executor.layers.layernorm import LayerNorm
from pagoda.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    load_named_weight,
)
from pagoda.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from pagoda.model_executor.models.kv_spec import KVCacheSpec
from pagoda.model_executor.models.pipeline import MissingLayer, is_first_stage, is_last_stage, make_layers
from pagoda.model_executor.models.utils import maybe_prefix, packed_modules
from pagoda.model_executor.parallel_state import divide, get_tp_size


def bidirectional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: list[int],
                            scale: float) -> torch.Tensor:
    """Per-request full attention over a flat batch: q, k, v [T, heads, D] → [T, heads, D]."""
    lengths = [b - a for a, b in zip(starts[:-1], starts[1:])]
    if len(lengths) == 1:
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), scale=scale)
        return out.transpose(0, 1)
    device, longest = q.device, max(lengths)
    lens = torch.tensor(lengths, device=device)
    offsets = torch.arange(longest, device=device)
    valid = offsets.unsqueeze(0) < lens.unsqueeze(1)  # [R, Lmax]
    index = (torch.tensor(starts[:-1], device=device).unsqueeze(1) + offsets).masked_fill(~valid, 0)

    def pad(x: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> [R, H, Lmax, D]
        return x[index].transpose(1, 2)

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=valid[:, None, None, :], scale=scale)
    return out.transpose(1, 2)[valid]  # back to [T, H, D], rows in flat order


class BertEmbeddings(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = VocabParallelEmbedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = VocabParallelEmbedding(max(1, config.type_vocab_size), config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        kind = getattr(config, "position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"position_embedding_type={kind!r} is not supported; only 'absolute'")

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        token_type = self.token_type_embeddings(torch.zeros_like(input_ids[:1]))
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + token_type
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, config: Any, quant_config=None, prefix: str = ""):
        super().__init__()
        total_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // total_heads
        self.num_heads = divide(total_heads, get_tp_size(), "num_attention_heads")
        self.q_size = self.num_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_heads, total_heads, bias=True,
                                          quant_config=quant_config, prefix=maybe_prefix(prefix, "qkv_proj"))
        self.scale = self.head_dim**-0.5

    def forward(self, hidden: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size] * 3, dim=-1)
        shape = (-1, self.num_heads, self.head_dim)
        out = bidirectional_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                      metadata.query_start_loc_cpu, self.scale)
        return out.reshape(-1, self.q_size)


class BertSelfOutput(nn.Module):
    def __init__(self, config: Any, input_size: int, quant_config=None, prefix: str = ""):
        super().__init__()
        self.dense = RowParallelLinear(input_size, config.hidden_size, bias=True, quant_config=quant_config,
                                       prefix=maybe_prefix(prefix, "dense"))
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: Any, quant_config=None, prefix: str = ""):
        super().__init__()
        self.self = BertSelfAttention(config, quant_config, maybe_prefix(prefix, "self"))
        self.output = BertSelfOutput(config, config.hidden_size, quant_config, maybe_prefix(prefix, "output"))

    def forward(self, hidden: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        return self.output(self.self(hidden, metadata), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: Any, quant_config=None, prefix: str = ""):
        super().__init__()
        self.dense = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True,
                                          quant_config=quant_config, prefix=maybe_prefix(prefix, "dense"))
        self.act = get_act_fn(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, config: Any, quant_config=None, prefix: str = ""):
        super().__init__()
        self.attention = BertAttention(config, quant_config, maybe_prefix(prefix, "attention"))
        self.intermediate = BertIntermediate(config, quant_config, maybe_prefix(prefix, "intermediate"))
        self.output = BertSelfOutput(config, config.intermediate_size, quant_config, maybe_prefix(prefix, "output"))

    def forward(self, hidden: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        attended = self.attention(hidden, metadata)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: Any, quant_config=None, prefix: str = ""):
        super().__init__()
        self.start_layer, self.end_layer, self.layer = make_layers(
            config.num_hidden_layers, lambda i: BertLayer(config, quant_config, maybe_prefix(prefix, f"layer.{i}")))

    def forward(self, hidden: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        for i in range(self.start_layer, self.end_layer):
            hidden = self.layer[i](hidden, metadata)
        return hidden


class BertModel(nn.Module):
    # (fused parameter, checkpoint piece, shard id)
    stacked_params_mapping = [
        (".qkv_proj", ".query", "q"),
        (".qkv_proj", ".key", "k"),
        (".qkv_proj", ".value", "v"),
    ]
    packed_modules_mapping = packed_modules(stacked_params_mapping)
    _skipped_prefixes = ("pooler.", "cls.", "embeddings.position_ids")
    intermediate_names = ("hidden_states",)  # what a pipeline stage hands to the next

    def __init__(self, hf_config: Any, attn_backend: AttentionBackend | None = None, quant_config=None,
                 prefix: str = ""):
        super().__init__()
        self.config = hf_config
        self.is_last_stage = is_last_stage()
        self.embeddings = BertEmbeddings(hf_config) if is_first_stage() else MissingLayer()
        self.encoder = BertEncoder(hf_config, quant_config, maybe_prefix(prefix, "encoder"))
        self.intermediate_width = hf_config.hidden_size
        self.kv_cache_spec = KVCacheSpec(num_layers=0, num_kv_heads=0, head_size=0)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                attn_metadata: AttentionMetadata, intermediate_tensors: dict[str, torch.Tensor] | None = None,
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        if intermediate_tensors is not None:  # a later pipeline stage
            hidden = intermediate_tensors["hidden_states"]
        else:
            hidden = self.embeddings(input_ids, positions)
        hidden = self.encoder(hidden, attn_metadata)
        return hidden if self.is_last_stage else {"hidden_states": hidden}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith("bert."):
                name = name[len("bert."):]
            if name.startswith(self._skipped_prefixes):
                continue
            for fused, piece, shard_id in self.stacked_params_mapping:
                if piece + "." in name and ".attention.self" in name:
                    target = name.replace(piece + ".", fused + ".")
                    param = params.get(target)
                    if param is None:
                        break  # a layer of another pipeline stage
                    param.weight_loader(param, tensor, shard_id)
                    loaded.add(target)
                    break
            else:
                load_named_weight(params, name, tensor, loaded)
        return loaded
