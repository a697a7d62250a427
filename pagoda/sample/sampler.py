"""The batched sampler: one token per row from [R, V] logits, with vLLM's semantics.

Order of work (the input logits are never modified):
1. logprobs of the raw logits, when any row asked (see logprobs.py): their logsumexp and top-k here,
   the sampled token's logprob and rank after sampling (no [R, V] log_softmax is written);
2. per-request logits processing (logits_processors.py): user callables, then the static bias
   (allowed_token_ids, logit_bias), then bans (bad words; EOS/stop ids of rows short of `min_tokens`);
3. penalties (penalties.py): repetition over prompt + output, frequency and presence over output;
   stages 2-3 run in float32 on a copy (the penalties in place on it, at the rows' own token ids),
   and cost nothing (no copy either) when no row uses them;
4. fused path (CUDA, no row with top-k): one Triton kernel (kernels/sample.py) reads the logits as
   they are (bf16 included) and does the greedy argmax and the exponential race
   argmax(logits / T - log q) of every row at once, q = -log u with u from Philox keyed by a per-row
   seed; the seeds of a step are one draw per row (see `race_seeds`). Rows with top-p or min-p are
   first cut to their kept set by a threshold on logits / T found without a sort (kernels/top_p.py);
5. top-k path (every random row has a top-k <= tuning.SAMPLE_TOP_K_PATH_MAX_K; CPU and CUDA): the
   draw runs on each row's max_top_k largest logits only, with the same q as below at those ids
   (sample/top_k_path.py: one topk instead of a sort over the vocabulary). On CUDA a batch where
   only some random rows have one runs both: the fused path for all, the top-k path for those rows
   (`mixed_sample`);
6. torch path (CPU, or any other batch with top-k/top-p/min-p), in float32: greedy rows argmax (ties go to
   the lowest id, as torch.argmax); random rows logits / temperature, then min-p, top-k, top-p (the
   sort-based version: the kept set includes the token whose cumulative probability crosses p), then
   softmax and the exponential race argmax(probs / q), q ~ Exp(1); without top-k/top-p the race runs
   on the logits as argmax(logits - log q), the same winner without a softmax. On CUDA its q are the
   fused path's (-log u of the same per-row Philox seeds); on CPU they come from torch's generators.

Invariants:
- A seeded row draws from its own generator only, so its tokens do not depend on the other rows of
  the batch: on CUDA one Philox seed per step, whichever path the batch takes (both race with the
  same q; a batch gaining a top-k row only changes the float rounding of the race); on CPU its V
  values of q per step. Unseeded rows share torch's default generator.
- Greedy rows take no random numbers and give the same ids on both paths.
- No host sync on the hot path and no Python loop over rows, except the loop over seeded rows.
- Every row keeps at least one token: top-k keeps >= k (exactly k on the top-k path), top-p keeps the
  most likely token, min-p keeps every token at the maximum probability.
- A row whose user logits processor raises is still sampled from its unprocessed logits; the error
  goes to `metadata.row_errors` for the caller to fail that row's request (see logits_processors.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pagoda.kernels import tuning
from pagoda.sample.logits_processors import apply_bans, apply_bias, apply_user_processors
from pagoda.sample.logprobs import finish_raw_logprobs, raw_logprobs
from pagoda.sample.metadata import SamplingMetadata
from pagoda.sample.penalties import apply_penalties_
from pagoda.sample.race import exponential_race
from pagoda.sample.top_k_path import sample_top_k, top_k_path_eligible

# Per-row Philox seeds of the fused path are drawn in [0, 2**62).
_SEED_BOUND = 2**62


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [R] int64
    logprob_token_ids: torch.Tensor | None = None  # [R, k+1] int64: sampled id, then the top-k ids
    logprobs: torch.Tensor | None = None  # [R, k+1] float32, raw-logit logprobs
    sampled_ranks: torch.Tensor | None = None  # [R] int64, rank of the sampled token (1 = most likely)


class Sampler(torch.nn.Module):
    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != metadata.num_rows:
            raise ValueError(f"logits must be [R, V] with R = {metadata.num_rows} rows, got {tuple(logits.shape)}")
        raw = None
        if metadata.max_num_logprobs is not None:
            raw = raw_logprobs(logits, metadata.max_num_logprobs)
        processed = self.process_logits(logits, metadata)
        sampled = self.sample(processed, metadata)
        if raw is None:
            return SamplerOutput(sampled_token_ids=sampled)
        ids, values, ranks = finish_raw_logprobs(raw, sampled)
        return SamplerOutput(sampled_token_ids=sampled, logprob_token_ids=ids, logprobs=values,
                             sampled_ranks=ranks)

    @staticmethod
    def process_logits(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """Stages 2-3: float32 logits with every per-request rule applied (a new tensor) when any rule
        applies; otherwise the logits as given (any float dtype, not copied)."""
        if not _has_logits_rules(metadata):
            return logits
        # A float32 copy (never the caller's tensor): the penalties then work on it in place.
        logits = logits.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if metadata.logits_processors:
            logits = apply_user_processors(logits, metadata.logits_processors, metadata.row_errors)
        logits = apply_bias(logits, metadata.bias_rows, metadata.bias)
        logits = apply_bans(logits, metadata.bad_words_masks, metadata.min_tokens_masks)
        if metadata.penalties is not None:
            logits = apply_penalties_(logits.contiguous(), metadata.penalties)
        return logits

    def sample(self, logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """Token ids [R] int64 from processed logits (already masked; any float dtype)."""
        seeds = race_seeds(metadata, logits.device) if logits.is_cuda else None
        if seeds is not None and fused_sampling_eligible(metadata):
            return fused_sample(logits, metadata, seeds)
        if seeds is not None and mixed_sampling_eligible(metadata):
            return mixed_sample(logits, metadata, seeds)
        greedy = None if metadata.all_random else logits.argmax(dim=-1)  # any dtype: exact
        if metadata.all_greedy:
            return greedy
        is_greedy = metadata.temperature <= 0.0
        if top_k_path_eligible(metadata):
            random = sample_top_k(logits, metadata, seeds)
            return random if greedy is None else torch.where(is_greedy, greedy, random)
        logits = logits.to(torch.float32)
        temperature = torch.where(is_greedy, torch.ones_like(metadata.temperature), metadata.temperature)
        logits = logits / temperature.unsqueeze(1)
        if not metadata.no_min_p:
            logits = apply_min_p(logits, metadata.min_p)
        q = None
        if seeds is not None:  # the fused path's draws, so a seeded row's q never depends on the path
            from pagoda.kernels.sample import race_uniforms

            q = -torch.log(race_uniforms(seeds, logits.shape[1]))
        if metadata.no_top_k and metadata.no_top_p:
            random = exponential_race(logits, metadata.generators, log_domain=True, q=q)  # no softmax needed
        else:
            logits = apply_top_k_top_p(logits, None if metadata.no_top_k else metadata.top_k,
                                       None if metadata.no_top_p else metadata.top_p)
            random = exponential_race(torch.softmax(logits, dim=-1), metadata.generators, q=q)
        if greedy is None:
            return random
        return torch.where(is_greedy, greedy, random)


def fused_sampling_eligible(metadata: SamplingMetadata) -> bool:
    """Whether the batch may take the fused path on CUDA (stage 4): no row with top-k (a k >= V is
    written as "no top-k", see metadata.py), and PAGODA_FUSED_SAMPLING not off."""
    return tuning.FUSED_SAMPLING and metadata.no_top_k


def mixed_sampling_eligible(metadata: SamplingMetadata) -> bool:
    """Whether a CUDA batch where only some random rows have a top-k (<= the top-k path's bound) may
    sample the others on the fused path and those on the top-k path (`mixed_sample`)."""
    return (tuning.FUSED_SAMPLING and metadata.top_k_rows is not None
            and 0 < metadata.max_top_k <= tuning.SAMPLE_TOP_K_PATH_MAX_K)


def mixed_sample(logits: torch.Tensor, metadata: SamplingMetadata, seeds: torch.Tensor) -> torch.Tensor:
    """Stages 4 and 5 in one batch (Triton; CPU tensors only under Triton's interpreter): every row through
    the fused race (top-p/min-p by threshold), then the rows `metadata.top_k_rows` again through the
    top-k path, whose tokens replace theirs. Both draw with the rows' own q, so a row's token is the
    one it would get in a batch of its own kind."""
    out = fused_sample(logits, metadata, seeds)
    rows = metadata.top_k_rows
    sub = replace(metadata, temperature=metadata.temperature[rows], top_p=metadata.top_p[rows],
                  top_k=metadata.top_k[rows], min_p=metadata.min_p[rows], generators={})
    out[rows] = sample_top_k(logits[rows], sub, seeds[rows])
    return out


def fused_sample(logits: torch.Tensor, metadata: SamplingMetadata, seeds: torch.Tensor) -> torch.Tensor:
    """Stage 4 (Triton; CPU tensors only under Triton's interpreter): the race in one read of the logits,
    cut first to each row's top-p/min-p set by a threshold (kernels/top_p.py) when any row has one."""
    from pagoda.kernels.sample import race_sample  # Triton: imported on the CUDA path only

    thresholds = None
    if not (metadata.no_top_p and metadata.no_min_p):
        from pagoda.kernels.top_p import top_p_thresholds

        thresholds = top_p_thresholds(logits, metadata.temperature, metadata.top_p, metadata.min_p)
    return race_sample(logits, metadata.temperature, seeds, thresholds=thresholds)


def _has_logits_rules(metadata: SamplingMetadata) -> bool:
    """Whether stages 2-3 change any row (the conditions under which their functions do work)."""
    return bool(metadata.logits_processors
                or (metadata.bias_rows is not None and metadata.bias is not None)
                or any(metadata.bad_words_masks.values()) or any(metadata.min_tokens_masks.values())
                or metadata.penalties is not None)


def race_seeds(metadata: SamplingMetadata, device: torch.device | str) -> torch.Tensor:
    """Philox seeds [R] int64 of the fused path for one step: unseeded rows draw theirs from torch's
    default generator (one launch); each seeded row overwrites its own with one draw from its
    generator, so the generator advances once per sampled token whatever else is in the batch.
    An all-greedy batch draws nothing (greedy rows take no random numbers): zeros."""
    rows = metadata.num_rows
    if metadata.all_greedy:
        return torch.zeros(rows, dtype=torch.int64, device=device)
    if len(metadata.generators) < rows:
        seeds = torch.randint(0, _SEED_BOUND, (rows,), dtype=torch.int64, device=device)
    else:
        seeds = torch.empty(rows, dtype=torch.int64, device=device)
    for row, generator in metadata.generators.items():
        seeds[row:row + 1].random_(0, _SEED_BOUND, generator=generator)
    return seeds


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's top probability."""
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                      top_p: torch.Tensor | None) -> torch.Tensor:
    """vLLM's sort-based top-k then top-p. `top_k` 0 (or >= V) disables a row; `top_p` 1.0 does."""
    if top_k is None and top_p is None:
        return logits
    vocab = logits.shape[1]
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    if top_k is not None:
        k = torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)
        kth = logits_sort.gather(1, (vocab - k).unsqueeze(1))  # the k-th largest value
        logits_sort = logits_sort.masked_fill(logits_sort < kth, float("-inf"))
    if top_p is not None:
        cumulative = torch.softmax(logits_sort, dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1.0 - top_p.unsqueeze(1)
        drop[:, -1] = False  # the most likely token always stays
        logits_sort = logits_sort.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, logits_idx, logits_sort)
