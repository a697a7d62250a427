"""SamplingMetadata: the per-row sampling settings of one batch, as tensors the sampler reads.

Encodings (row r of a batch of R rows; every tensor lives on the logits' device):
- `temperature[r]` float32: 0.0 marks a greedy row (argmax); > 0 divides the logits.
- `top_p[r]` float32 in (0, 1]: 1.0 disables top-p.
- `top_k[r]` int64: k in [1, V) keeps the k most likely tokens; 0 disables top-k. SamplingParams'
  -1 ("disabled") and any k >= V (which keeps every token, as vLLM treats it) are written as 0, so
  such a row does not count against `no_top_k` and the batch keeps the fused sampling path.
- `min_p[r]` float32 in [0, 1]: 0.0 disables min-p.
- `all_greedy` / `all_random` / `no_top_p` / `no_top_k` / `no_min_p` are host-side summaries that let
  the sampler skip whole stages; they must agree with the tensors (the builder keeps them so). The
  no_* three look at the random rows only: a greedy row's top-k, top-p or min-p never change its argmax.
- `max_top_k` / `random_rows_top_k`: host-side too: the largest top-k of any random row (0 when none) and
  whether every random row (temperature > 0) has a top-k; together they choose the sampler's top-k
  path (sample/top_k_path.py), which looks at the `max_top_k` largest logits of each row only.
- `top_k_rows` [T] int64: the random rows with a top-k, only in a batch where some random rows have
  none (None otherwise): those rows take the top-k path, the others the fused one (CUDA).
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

One builder makes every SamplingMetadata: worker/sampling_inputs.py, from the runner's persistent
InputBatch rows (`SamplingInputs.build`, per step) or from a list of SamplingParams
(`build_sampling_metadata`, for tests and one-shot use), which fills a fresh InputBatch and runs that
same step path, so the two cannot encode a request differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pagoda.sample.logits_processors import RowProcessors
from pagoda.sample.penalties import PenaltyInputs


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
    max_top_k: int = 0
    random_rows_top_k: bool = False
    top_k_rows: torch.Tensor | None = None
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
