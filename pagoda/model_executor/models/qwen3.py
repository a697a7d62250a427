"""Qwen3: the Llama decoder with per-head RMSNorm on q and k (before rotary) and no q/k/v bias.

Invariants: `q_norm`/`k_norm` have one weight of size head_dim shared by all heads; everything
else is Llama's code (see llama.py). `head_dim` comes from the config (it need not be hidden/heads).
"""

from __future__ import annotations

from typing import Any

import torch

from pagoda.attention.backend import AttentionBackend
from pagoda.model_executor.layers.layernorm import RMSNorm
from pagoda.model_executor.layers.rotary import RotaryEmbedding
from pagoda.model_executor.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: Any, layer_idx: int, attn_backend: AttentionBackend, rotary_emb: RotaryEmbedding,
                 quant_config=None, prefix: str = ""):
        super().__init__(config, layer_idx, attn_backend, rotary_emb, quant_config, prefix)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q_norm(q.reshape(q.shape[0], -1, self.head_dim)).reshape(q.shape)
        k = self.k_norm(k.reshape(k.shape[0], -1, self.head_dim)).reshape(k.shape)
        return q, k


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention


class Qwen3Model(LlamaModel):
    layer_cls = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen3Model
