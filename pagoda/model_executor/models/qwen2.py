"""Qwen2: the Llama decoder with a bias on the q/k/v projections (none on o_proj).

Invariant: everything but `bias_flags` is Llama's code (see llama.py); Qwen2's optional sliding
window is off in released checkpoints (`use_sliding_window: false`), and full attention is used.
"""

from __future__ import annotations

from typing import Any

from pagoda.model_executor.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen2Attention(LlamaAttention):
    @staticmethod
    def bias_flags(config: Any) -> tuple[bool, bool]:
        return True, False


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen2Attention


class Qwen2Model(LlamaModel):
    layer_cls = Qwen2DecoderLayer


class Qwen2ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen2Model
