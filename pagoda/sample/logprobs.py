"""Logprob gathering shared by sampled tokens and prompt tokens (vLLM's "raw_logprobs" conventions).

Invariants:
- Logprobs are log_softmax of the model's raw logits in float32: before temperature, penalties,
  min-tokens masking, top-k/top-p/min-p.
- Column 0 is the target token (the sampled or the actual prompt token); columns 1..k are the k most
  likely tokens, most likely first (the target may appear in both places).
- rank = 1 + the number of tokens whose logprob is strictly greater than the target's.
- Token ids come back int64, logprobs float32, ranks int64; nothing syncs with the host.
- The sampler's path (`raw_logprobs` then `finish_raw_logprobs`) never writes a [R, V] float32 tensor:
  the raw logits' top-k before processing; after sampling, their logsumexp with the token's logit and
  rank (one Triton pass on CUDA, kernels/logprob_stats.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows of [P, V] float32 worked on at once by compute_prompt_logprobs (bounds its extra memory).
_PROMPT_CHUNK_ROWS = 1024


def gather_logprobs(
    logprobs: torch.Tensor, num_logprobs: int, token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From full-vocabulary `logprobs` [N, V]: (ids [N, k+1], logprobs [N, k+1], ranks [N]) for `token_ids` [N]."""
    if num_logprobs < 0:
        raise ValueError(f"num_logprobs must be >= 0, got {num_logprobs}")
    token_ids = token_ids.to(torch.int64).unsqueeze(-1)
    token_logprobs = logprobs.gather(-1, token_ids)
    ranks = (logprobs > token_logprobs).sum(-1) + 1
    k = min(num_logprobs, logprobs.shape[-1])
    top_logprobs, top_ids = torch.topk(logprobs, k, dim=-1)
    ids = torch.cat((token_ids, top_ids), dim=1)
    values = torch.cat((token_logprobs, top_logprobs), dim=1)
    return ids, values, ranks


@dataclass
class RawLogprobs:
    """What the sampled tokens' raw logprobs need from the raw logits [R, V], taken before processing: the
    raw logits themselves (never modified by the sampler) and their top-k; with `finish_raw_logprobs`
    after sampling, the same results as `gather_logprobs(log_softmax(logits), k, sampled)` without
    writing a [R, V] tensor."""

    logits: torch.Tensor  # [R, V] any float dtype
    top_ids: torch.Tensor  # [R, k] int64, most likely first
    top_logits: torch.Tensor  # [R, k] float32


def raw_logprobs(logits: torch.Tensor, num_logprobs: int) -> RawLogprobs:
    if num_logprobs < 0:
        raise ValueError(f"num_logprobs must be >= 0, got {num_logprobs}")
    top_values, top_ids = torch.topk(logits, min(num_logprobs, logits.shape[-1]), dim=-1)
    return RawLogprobs(logits, top_ids, top_values.to(torch.float32))


def finish_raw_logprobs(raw: RawLogprobs, token_ids: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [R, k+1], logprobs [R, k+1], ranks [R]) of `token_ids` [R]: gather_logprobs' conventions."""
    token_ids = token_ids.to(torch.int64)
    if raw.logits.is_cuda:
        from pagoda.kernels.logprob_stats import logprob_stats  # Triton: CUDA only

        log_norm, token_logit, ranks = logprob_stats(raw.logits, token_ids)
    else:
        log_norm, token_logit, ranks = logprob_stats_torch(raw.logits, token_ids)
    values = torch.cat((token_logit.unsqueeze(1), raw.top_logits), dim=1) - log_norm.unsqueeze(1)
    return torch.cat((token_ids.unsqueeze(1), raw.top_ids), dim=1), values, ranks


def logprob_stats_torch(logits: torch.Tensor, token_ids: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_norm [R] float32, token_logit [R] float32, rank [R] int64): each row's logsumexp, the token's logit
    and 1 + the number of logits above it (the order of the logits is that of the logprobs). The torch
    reference of kernels/logprob_stats.py, and the CPU path."""
    x = logits.to(torch.float32)
    token_logit = x.gather(1, token_ids.to(torch.int64).unsqueeze(1))
    ranks = (x > token_logit).sum(-1) + 1
    return torch.logsumexp(x, dim=-1), token_logit.squeeze(1), ranks


def compute_prompt_logprobs(
    logits: torch.Tensor, target_ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logprobs of `target_ids` [P] under `logits` [P, V] (row i scores the token that follows position i).

    Returns (token_ids [P, k+1], logprobs [P, k+1], ranks [P]) with the conventions above. Works in
    chunks of rows so a long prompt never needs a second [P, V] float32 copy.
    """
    if logits.dim() != 2 or target_ids.dim() != 1 or logits.shape[0] != target_ids.shape[0]:
        raise ValueError(f"logits must be [P, V] and target_ids [P], got {tuple(logits.shape)} "
                         f"and {tuple(target_ids.shape)}")
    parts = []
    for start in range(0, logits.shape[0], _PROMPT_CHUNK_ROWS):
        chunk = logits[start:start + _PROMPT_CHUNK_ROWS]
        logprobs = torch.log_softmax(chunk.to(torch.float32), dim=-1)
        parts.append(gather_logprobs(logprobs, k, target_ids[start:start + _PROMPT_CHUNK_ROWS]))
    if not parts:
        vocab = logits.shape[1]
        k = min(k, vocab)
        empty = logits.new_empty((0, k + 1))
        return (empty.to(torch.int64), empty.to(torch.float32),
                torch.empty(0, dtype=torch.int64, device=logits.device))
    return tuple(torch.cat(column) for column in zip(*parts))  # type: ignore[return-value]
