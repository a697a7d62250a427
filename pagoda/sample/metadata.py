"""SamplingMetadata: the per-row sampling settings of one batch, as tensors the sampler reads.

Encodings (row r of a batch of R rows; every tensor lives on the logits' device):
- `temperature[r]` float32: 0.0 marks a greedy row (argmax); > 0 divides the logits.
- `top_p[r]` float32 in (0, 1]: 1.0 disables top-p.
- `top_k[r]` int64: k in [1, V) keeps the k most likely tokens; 0 (and any k >= V) disables top-k.
  SamplingParams' -1 ("disabled") is written as 0.
- `min_p[r]` float32 in [0, 1]: 0.0 disables min-p.
- `all_greedy` / `all_random` / `no_top_p` / `no_top_k` / `no_min_p` are host-side summaries that let
  the sampler skip whole stages; they must agree with the tensors (`build` keeps them so).
- `generators[r]`: the row's own torch.Generator (seeded requests only, on the logits' device). Per
  sampled token it is advanced by exactly one draw, whatever else is in the batch: on CUDA one
  Philox seed (the race's q are -log u of Philox uniforms keyed by it); on CPU V exponentials.
- `max_num_logprobs`: the largest `logprobs` any row asked for; None when no row asked.
- `min_tokens_masks[r]`: token ids to forbid in row r (rows still short of `min_tokens`: EOS and the
  stop token ids); rows not listed are unrestricted. `bad_words_masks[r]` likewise, for bad words.
- `logits_processors[r]`: row r's user callables and the ids they see (see logits_processors.py).
- `bias_rows` [B] int64 / `bias` [B, V] float32: additive bias of the rows that have one
  (allowed_token_ids, logit_bias); both None when no row has one.
- `penalties`: the rows with a repetition/frequency/presence penalty and their tokens; None when no
  row has one (the `no_penalties` fast path).
- `row_errors[r]`: why row r's own rules failed (building its bans, or one of its user logits
  processors raising): filled while the metadata is built and while the Sampler applies stage 1; such
  a row is still sampled (its logits as they were before the failing rule), and the caller fails its
  request. Empty in a healthy batch.

The model runner builds the metadata per step from its persistent InputBatch and per-request device
tensors (worker/sampling_inputs.py); `build` is the simple path that makes it from scratch (tests,
one-shot use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pagoda.sample.logits_processors import RowProcessors, bad_words_bans, static_bias_vector
from pagoda.sample.penalties import PenaltyInputs
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
    bad_words_masks: dict[int, list[int]] = field(default_factory=dict)
    logits_processors: dict[int, RowProcessors] = field(default_factory=dict)
    bias_rows: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    penalties: PenaltyInputs | None = None
    row_errors: dict[int, str] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.temperature.shape[0]

    @property
    def no_penalties(self) -> bool:
        return self.penalties is None

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        vocab_size: int,
        device: torch.device | str = "cpu",
        generators: dict[int, torch.Generator] | None = None,
        num_output_tokens: Sequence[int] | None = None,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
        output_token_ids: Sequence[Sequence[int]] | None = None,
    ) -> "SamplingMetadata":
        """Metadata for rows sampled with `params` (one SamplingParams per row).

        `generators`: per-row generators for seeded rows, carried over from earlier steps; rows with a
        seed and no entry get a fresh generator seeded with `SamplingParams.seed` (right for a first
        step only: pass the same dict back on later steps). `num_output_tokens[r]`: tokens row r has
        generated so far (default 0, or the length of `output_token_ids[r]`), compared with
        `min_tokens` to decide which rows are masked. `prompt_token_ids` / `output_token_ids` (one
        list per row, default empty) feed penalties, bad words and logits processors.
        """
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if num_output_tokens is not None and len(num_output_tokens) != len(params):
            raise ValueError(f"num_output_tokens must have one entry per row ({len(params)}), "
                             f"got {len(num_output_tokens)}")
        device = torch.device(device)
        prompts = [list(p) for p in prompt_token_ids] if prompt_token_ids is not None else [[] for _ in params]
        outputs = [list(o) for o in output_token_ids] if output_token_ids is not None else [[] for _ in params]
        if len(prompts) != len(params) or len(outputs) != len(params):
            raise ValueError(f"prompt_token_ids and output_token_ids must have one entry per row ({len(params)})")
        if num_output_tokens is None and output_token_ids is not None:
            num_output_tokens = [len(o) for o in outputs]
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
        bad_words = {}
        for row, p in enumerate(params):
            if p.bad_words_token_ids:
                banned = bad_words_bans(p.bad_words_token_ids, outputs[row])
                if banned:
                    bad_words[row] = banned
        processors = {row: RowProcessors.of(p, prompts[row], outputs[row])
                      for row, p in enumerate(params) if p.logits_processors}
        biased = [(row, static_bias_vector(p, vocab_size, device)) for row, p in enumerate(params)]
        biased = [(row, b) for row, b in biased if b is not None]
        penalized = [row for row, p in enumerate(params) if p.has_penalties]
        penalties = None
        if penalized:
            tokens = [prompts[r] + outputs[r] for r in penalized]
            width = max(1, max(len(t) for t in tokens))
            padded = np.zeros((len(tokens), width), dtype=np.int64)
            for i, t in enumerate(tokens):
                padded[i, :len(t)] = t
            penalties = PenaltyInputs.from_arrays(
                np.array(penalized), padded, np.array([len(prompts[r]) for r in penalized]),
                np.array([len(t) for t in tokens]),
                np.array([params[r].presence_penalty for r in penalized], dtype=np.float32),
                np.array([params[r].frequency_penalty for r in penalized], dtype=np.float32),
                np.array([params[r].repetition_penalty for r in penalized], dtype=np.float32),
                device,
            )
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
            bad_words_masks=bad_words,
            logits_processors=processors,
            bias_rows=torch.tensor([r for r, _ in biased], dtype=torch.int64, device=device) if biased else None,
            bias=torch.stack([b for _, b in biased]) if biased else None,
            penalties=penalties,
        )
