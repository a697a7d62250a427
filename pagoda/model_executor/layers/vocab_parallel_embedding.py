"""Token embedding and LM head split over tensor-parallel ranks by vocabulary rows.

Invariants:
- Rank r holds vocabulary rows [r·n, (r+1)·n) with n = ceil(vocab / tp_size); rows past the real
  vocabulary are zero padding and their logits are cut off before they leave `compute_logits`.
- Token ids outside this rank's rows embed to zero here; the all-reduce over ranks (identity with
  one rank) gives every token its one real embedding.
- `ParallelLMHead` shares the embedding's layout, so tied embeddings are the same Parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.model_executor.layers.linear import dense, set_weight_attrs
from pagoda.model_executor.parallel_state import get_tp_rank, get_tp_size, tp_all_gather, tp_all_reduce


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.num_embeddings = num_embeddings  # the real vocabulary size
        self.embedding_dim = embedding_dim
        self.rows_per_partition = -(-num_embeddings // self.tp_size)
        self.vocab_start = self.tp_rank * self.rows_per_partition
        self.vocab_end = min(self.vocab_start + self.rows_per_partition, num_embeddings)
        self.weight = nn.Parameter(torch.empty(self.rows_per_partition, embedding_dim), requires_grad=False)
        set_weight_attrs(self.weight, {"output_dim": 0, "weight_loader": self.weight_loader})

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        if loaded_weight.shape[0] != self.num_embeddings or loaded_weight.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"embedding of shape {tuple(loaded_weight.shape)} does not match "
                f"vocab_size={self.num_embeddings}, dim={self.embedding_dim}"
            )
        rows = loaded_weight[self.vocab_start : self.vocab_end]
        param.data[: rows.shape[0]].copy_(rows)
        param.data[rows.shape[0] :].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local = torch.where(outside, 0, input_ids - self.vocab_start)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0)
        return tp_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection to vocabulary logits; its weight has the embedding's layout."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False):
        super().__init__(num_embeddings, embedding_dim)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.rows_per_partition), requires_grad=False)
            set_weight_attrs(self.bias, {"output_dim": 0, "weight_loader": self._bias_loader})
        else:
            self.register_parameter("bias", None)

    def _bias_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        rows = loaded_weight[self.vocab_start : self.vocab_end]
        param.data[: rows.shape[0]].copy_(rows)
        param.data[rows.shape[0] :].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is not called directly; use compute_logits(head, hidden)")


def compute_logits(head: VocabParallelEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    """Logits over the real vocabulary for each row of `hidden`: [N, hidden] → [N, vocab]."""
    bias = getattr(head, "bias", None)
    logits = dense(hidden, head.weight, bias)
    logits = tp_all_gather(logits, dim=-1)
    return logits[..., : head.num_embeddings]
