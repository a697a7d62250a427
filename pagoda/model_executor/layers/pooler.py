"""Pooler: one vector per prompt from a flat batch of final hidden states (vLLM's pooling types).

- LAST: the hidden state of the prompt's last token (decoder embedding models);
- CLS: the first token's (BERT's [CLS]);
- MEAN: the mean over every prompt token, special tokens included (sentence-transformers' mean
  pooling over an all-ones attention mask).
Then, per request: cut to `dimensions` when asked (Matryoshka), and L2-normalize when the request's
`normalize` (or, when None, the model's PoolerConfig) says so.

Invariants:
- Request i's tokens are rows starts[i] : starts[i] + lengths[i] of `hidden`; every one of them is
  in this batch (pooling prompts are never chunked).
- Pooling runs in float32 on the hidden states' device with one host copy at the end; the vectors
  come back as float32 CPU tensors, one per request, in the order given.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pagoda.pooling_params import PoolerConfig, PoolingParams


class Pooler:
    def __init__(self, config: PoolerConfig) -> None:
        self.pooling_type = config.pooling_type
        self.normalize = config.normalize

    def pool(self, hidden: torch.Tensor, starts: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """[R, H] float32 pooled states, before truncation and normalization."""
        device = hidden.device
        if self.pooling_type == "LAST":
            index = torch.from_numpy(starts + lengths - 1).to(device)
            return hidden.index_select(0, index).float()
        if self.pooling_type == "CLS":
            return hidden.index_select(0, torch.from_numpy(starts).to(device)).float()
        total = int(lengths.sum())
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        token_index = torch.from_numpy(np.arange(total) + offsets).to(device)
        segment = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths)).to(device)
        sums = torch.zeros(len(lengths), hidden.shape[1], dtype=torch.float32, device=device)
        sums.index_add_(0, segment, hidden.index_select(0, token_index).float())
        return sums / torch.from_numpy(lengths).to(device=device, dtype=torch.float32).unsqueeze(1)

    def __call__(self, hidden: torch.Tensor, starts: np.ndarray, lengths: np.ndarray,
                 params: Sequence[PoolingParams | None]) -> list[torch.Tensor]:
        pooled = self.pool(hidden, np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64))
        dims = [p.dimensions if p is not None else None for p in params]
        norms = [self.normalize if p is None or p.normalize is None else p.normalize for p in params]
        if all(d is None for d in dims):
            normalized = F.normalize(pooled, p=2, dim=-1)
            keep = torch.tensor(norms, device=pooled.device).unsqueeze(1)
            return list(torch.where(keep, normalized, pooled).cpu().unbind(0))
        rows = []
        for vector, dim, norm in zip(pooled.cpu().unbind(0), dims, norms):
            if dim is not None:
                vector = vector[:dim]
            rows.append(F.normalize(vector, p=2, dim=-1) if norm else vector)
        return rows
