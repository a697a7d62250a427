"""Decoder checkpoints saved without their LM head (`LlamaModel`, `MistralModel`, `Qwen2Model`,
`Qwen3Model` architectures, e.g. e5-mistral) served as embedding models.

Each class is its generative sibling minus `lm_head`: `forward` is unchanged (final-norm hidden
states), the runner's Pooler takes the last token (LAST, normalized, by default). A generative
checkpoint can embed as well, without any adapter: `LLM(model, task="embed")`.

Invariants:
- Checkpoint names without the `model.` prefix (what `AutoModel.save_pretrained` writes) load into
  `model.*`; names with it load as they are; `lm_head.*` is ignored.
- These classes have no `compute_logits`: they can only embed.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from pagoda.attention.backend import AttentionBackend
from pagoda.model_executor.models.llama import LlamaForCausalLM, MistralForCausalLM
from pagoda.model_executor.models.qwen2 import Qwen2ForCausalLM
from pagoda.model_executor.models.qwen3 import Qwen3ForCausalLM


def _with_model_prefix(name: str) -> str:
    return name if name.startswith(("model.", "lm_head")) else "model." + name


def _embedding_model(base: type) -> type:
    class EmbeddingModel(base):
        def __init__(self, hf_config: Any, attn_backend: AttentionBackend, quant_config=None, prefix: str = ""):
            super().__init__(hf_config, attn_backend, quant_config, prefix)
            del self.lm_head

        @staticmethod
        def module_name(checkpoint_name: str) -> str:
            return _with_model_prefix(checkpoint_name)

        def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
            raise RuntimeError(f"{type(self).__name__} has no LM head; it can only embed")

        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
            self.tie_word_embeddings = True  # so the base skips any lm_head.* tensor
            renamed = ((_with_model_prefix(name), tensor) for name, tensor in weights)
            return super().load_weights(renamed)

    EmbeddingModel.__name__ = EmbeddingModel.__qualname__ = base.__name__.replace("ForCausalLM", "EmbeddingModel")
    return EmbeddingModel


LlamaEmbeddingModel = _embedding_model(LlamaForCausalLM)
MistralEmbeddingModel = _embedding_model(MistralForCausalLM)
Qwen2EmbeddingModel = _embedding_model(Qwen2ForCausalLM)
Qwen3EmbeddingModel = _embedding_model(Qwen3ForCausalLM)
