"""SamplingMetadata: the per-row sampling settings of one batch, as tensors the sampler reads.

Encodings (row r of a batch of R rows; every tensor lives on the logits' device):
- `temperature[r]` float32: 0.0 marks a greedy row (argmax); > 0 divides the logits.
- `top_p[r]` float32 in (0, 1]: 1.0 disables top-p.
- `top_k[r]` int64: k in [1, V) keeps the k most likely tokens; 0 (and any k >= V) disables top-k.
  SamplingParams' -1 ("disabled") is written as 0.
- `min_p[r]` float32 in [0, 1]: 0.0 disables min-p.
- `all_greedy` / `all_random` / `no_top_p` / `no_top_k` / `no_min_p` are host-side summaries that let
  the sampler skip whole stages; they must agree with the tensors (`build` keeps them so).
- `generators[r]`: the row's own torch.Generator (seeded requests only, on the logits' device); it is
  advanced by exactly one draw of V exponentials per sampled token, whatever else is in the batch.
- `max_num_logprobs`: the largest `logprobs` any row asked for; None when no row asked.
- `min_tokens_masks[r]`: token ids to forbid in row r (rows still short of `min_tokens`: EOS and the
  stop token ids); rows not listed are unrestricted.

The model runner keeps these tensors alive across steps and edits them by row; `build` is the
simple path that makes them from scratch (tests, one-shot use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from pagoda.sampling_params import SamplingParams, SamplingType


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    min_p: torch.Tensor
    all_greedy: bool
    all_random: bool
    no_top_p: bool
    no_top_k: bool
    no_min_p: bool
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    max_num_logprobs: int | None = None
    min_tokens_masks: dict[int, list[int]] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.temperature.shape[0]

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        vocab_size: int,
        device: torch.device | str = "cpu",
        generators: dict[int, torch.Generator] | None = None,
        num_output_tokens: Sequence[int] | None = None,
    ) -> "SamplingMetadata":
        """Metadata for rows sampled with `params` (one SamplingParams per row).

        `generators`: per-row generators for seeded rows, carried over from earlier steps; rows with a
        seed and no entry get a fresh generator seeded with `SamplingParams.seed` (right for a first
        step only: pass the same dict back on later steps). `num_output_tokens[r]`: tokens row r has
        generated so far (default 0), compared with `min_tokens` to decide which rows are masked.
        """
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if num_output_tokens is not None and len(num_output_tokens) != len(params):
            raise ValueError(f"num_output_tokens must have one entry per row ({len(params)}), "
                             f"got {len(num_output_tokens)}")
        device = torch.device(device)
        greedy = [p.sampling_type == SamplingType.GREEDY for p in params]
        temperature = [0.0 if g else float(p.temperature) for g, p in zip(greedy, params)]
        top_k = [0 if p.top_k < 0 or p.top_k >= vocab_size else p.top_k for p in params]
        gens = dict(generators or {})
        for row, p in enumerate(params):
            if p.sampling_type == SamplingType.RANDOM_SEED and row not in gens:
                gens[row] = torch.Generator(device=device).manual_seed(p.seed)
        masks: dict[int, list[int]] = {}
        for row, p in enumerate(params):
            done = 0 if num_output_tokens is None else num_output_tokens[row]
            if done < p.min_tokens and p.all_stop_token_ids:
                masks[row] = sorted(p.all_stop_token_ids)
        requested = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=torch.tensor(temperature, dtype=torch.float32, device=device),
            top_p=torch.tensor([float(p.top_p) for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor(top_k, dtype=torch.int64, device=device),
            min_p=torch.tensor([float(p.min_p) for p in params], dtype=torch.float32, device=device),
            all_greedy=all(greedy),
            all_random=not any(greedy),
            no_top_p=all(p.top_p >= 1.0 for p in params),
            no_top_k=all(k == 0 for k in top_k),
            no_min_p=all(p.min_p <= 0.0 for p in params),
            generators=gens,
            max_num_logprobs=max(requested) if requested else None,
            min_tokens_masks=masks,
        )
