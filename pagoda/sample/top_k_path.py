"""The sampler's top-k path: top-k, then min-p and top-p, on each row's K largest logits only.

When every random row has a top-k (and the largest k is at most tuning.SAMPLE_TOP_K_PATH_MAX_K), a
token outside a row's K = max_top_k largest logits can never be drawn, so the whole draw runs on the
[R, K] candidates from one torch.topk instead of sorting, softmaxing and scattering [R, V] (the
sort-based path of sampler.py, ~100x the bytes at V = 128k, K = 50):
1. values, ids = topk(logits, K): each row's K largest processed logits, most likely first;
2. scaled = values / T; candidates past a row's own k become -inf (k <= K);
3. min-p: drop p < min_p * p_max (p_max is candidate 0: the ratio needs no full-vocab softmax);
4. top-p: drop a candidate when the probability of the candidates before it (softmax over the kept
   ones, the same normalisation as the full-vocab softmax after top-k) is already >= p; candidate 0
   always stays. This is the sort-based rule (drop where the ascending cumulative sum <= 1 - p).
5. the exponential race in the log domain: argmax(scaled - log q) over the kept candidates, with q
   the race's own exponentials at the candidates' vocab ids (CUDA: -log u of the per-row Philox seeds
   at those ids, kernels/sample.py `race_uniforms_at`; CPU: each row's V exponentials drawn as the
   sort path draws them, gathered). So a seeded row draws the same q on both paths.

Invariants: same distribution as the sort path, except that a tie at a row's k-th largest logit
keeps exactly k tokens (the sort path keeps every tied one); no host sync, no loop over rows (but
the CPU loop over seeded rows); greedy rows are left to the caller (their entry here is meaningless).
"""

from __future__ import annotations

import torch

from pagoda.kernels import tuning
from pagoda.sample.metadata import SamplingMetadata
from pagoda.sample.race import MIN_Q, draw_exponentials



def top_k_path_eligible(metadata: SamplingMetadata) -> bool:
    """Whether the batch's random rows all have a top-k within the path's bound."""
    return metadata.random_rows_top_k and 0 < metadata.max_top_k <= tuning.SAMPLE_TOP_K_PATH_MAX_K


def sample_top_k(logits: torch.Tensor, metadata: SamplingMetadata, seeds: torch.Tensor | None) -> torch.Tensor:
    """Token ids [R] int64 of the random rows from processed logits [R, V] (any float dtype; before
    temperature); `seeds` [R] int64 are the race's Philox seeds (CUDA), None on CPU."""
    vocab = logits.shape[1]
    k_max = min(metadata.max_top_k, vocab)
    values, ids = torch.topk(logits, k_max, dim=-1)  # sorted, most likely first
    temperature = torch.where(metadata.temperature > 0, metadata.temperature,
                              torch.ones_like(metadata.temperature))
    scaled = values.to(torch.float32) / temperature.unsqueeze(1)
    columns = torch.arange(k_max, device=logits.device).unsqueeze(0)
    k = torch.where(metadata.top_k > 0, metadata.top_k, torch.full_like(metadata.top_k, k_max))
    scaled = scaled.masked_fill(columns >= k.unsqueeze(1), float("-inf"))
    if not metadata.no_min_p:
        probs = torch.softmax(scaled, dim=-1)
        scaled = scaled.masked_fill(probs < probs[:, :1] * metadata.min_p.unsqueeze(1), float("-inf"))
    if not metadata.no_top_p:
        probs = torch.softmax(scaled, dim=-1)
        before = probs.cumsum(dim=-1) - probs
        drop = before >= metadata.top_p.unsqueeze(1)
        drop[:, 0] = False
        scaled = scaled.masked_fill(drop, float("-inf"))
    q = _exponentials_at(ids, metadata, seeds, vocab).clamp_min_(MIN_Q)
    winner = (scaled - q.log_()).argmax(dim=-1, keepdim=True)
    return ids.gather(1, winner).squeeze(1)


def _exponentials_at(ids: torch.Tensor, metadata: SamplingMetadata, seeds: torch.Tensor | None,
                     vocab: int) -> torch.Tensor:
    """q ~ Exp(1) [R, K] at vocab ids `ids`: the values the sort path's race would use there."""
    if seeds is not None:
        from pagoda.kernels.sample import race_uniforms_at  # Triton: CUDA only

        return -torch.log(race_uniforms_at(seeds, ids))
    return draw_exponentials(ids.shape[0], vocab, metadata.generators, ids.device).gather(1, ids)
