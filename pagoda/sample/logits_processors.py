"""Per-request logits processing before sampling: user callables, allowed ids and logit bias, bans.

Stages, in the order the Sampler applies them to float32 logits (vLLM's order; user callables run
first, as in vLLM V0):
1. `logits_processors` (SamplingParams): Python callables per row, given the row's prompt ids (3-arg
   form), its output ids so far and its [V] logits; they return the new row.
2. Static bias: one additive [V] vector per request that needs it, built once when the request
   arrives: -inf outside `allowed_token_ids`, plus `logit_bias`.
3. Bans: -inf at ids a row may not produce now: EOS and stop ids while short of `min_tokens`, and the
   last token of every bad word whose other tokens end the row's output (vLLM matches bad words
   against the output only, never the prompt).

Invariants:
- Every function here is out of place except stage 1, which writes into the tensor it is given
  (the Sampler hands it its own copy).
- Stage 1 is isolated per row: a callable that raises (or returns something that is not a tensor of
  the row's shape) leaves that row's logits as they were, and the error, naming the processor, is
  put in `errors[row]`; the other rows are processed as usual.
- Host work is proportional to the rows that use a stage; rows without one cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from pagoda.sampling_params import SamplingParams, logits_processor_arity


@dataclass
class RowProcessors:
    """One row's user callables with what they are called with."""

    processors: list[tuple[int, Callable]]  # (arity, callable)
    prompt_token_ids: list[int]
    output_token_ids: list[int]

    @classmethod
    def of(cls, params: SamplingParams, prompt_token_ids: list[int], output_token_ids: list[int]) -> "RowProcessors":
        return cls([(logits_processor_arity(p), p) for p in params.logits_processors or ()],
                   prompt_token_ids, output_token_ids)


def apply_user_processors(logits: torch.Tensor, rows: dict[int, RowProcessors],
                          errors: dict[int, str] | None = None) -> torch.Tensor:
    """Run each row's callables on logits[row] (in place on `logits`, which the caller owns).

    A row whose callable fails keeps its logits and gets its reason in `errors` (raised when None)."""
    for row, spec in rows.items():
        values = logits[row]
        try:
            for arity, processor in spec.processors:
                if arity == 3:
                    result = processor(list(spec.prompt_token_ids), list(spec.output_token_ids), values)
                else:
                    result = processor(list(spec.output_token_ids), values)
                if not isinstance(result, torch.Tensor) or result.shape != values.shape:
                    raise ValueError(f"a logits processor must return a tensor of shape {tuple(values.shape)}, "
                                     f"got {type(result).__name__}")
                values = result.to(logits.dtype)
        except Exception as exc:  # noqa: BLE001 - user code: its failure is its request's alone
            if errors is None:
                raise
            errors[row] = f"logits processor {_name(processor)} raised {type(exc).__name__}: {exc}"
            continue
        logits[row] = values
    return logits


def _name(processor: Callable) -> str:
    return getattr(processor, "__qualname__", None) or type(processor).__name__


def static_bias_vector(params: SamplingParams, vocab_size: int, device: torch.device | str) -> torch.Tensor | None:
    """[V] float32 additive bias for allowed_token_ids and logit_bias; None when the request has neither."""
    if params.allowed_token_ids is None and not params.logit_bias:
        return None
    bias = torch.zeros(vocab_size, dtype=torch.float32)
    if params.allowed_token_ids is not None:
        bias.fill_(float("-inf"))
        bias[torch.tensor(sorted(set(params.allowed_token_ids)), dtype=torch.int64)] = 0.0
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.int64)
        bias.index_add_(0, ids, torch.tensor(list(params.logit_bias.values()), dtype=torch.float32))
    return bias.to(device)


def apply_bias(logits: torch.Tensor, rows: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """logits[rows[i]] += bias[i] (out of place); nothing when no row has a bias."""
    if rows is None or bias is None:
        return logits
    return logits.index_add(0, rows, bias)


def bad_words_bans(bad_words_token_ids: Sequence[Sequence[int]], output_token_ids: Sequence[int]) -> list[int]:
    """Ids to ban next: the last token of each bad word whose preceding tokens end the output."""
    banned = []
    num_output = len(output_token_ids)
    for word in bad_words_token_ids:
        prefix = len(word) - 1
        if prefix > num_output:
            continue
        if prefix == 0 or list(output_token_ids[num_output - prefix:]) == list(word[:prefix]):
            banned.append(word[-1])
    return banned


def apply_bans(logits: torch.Tensor, *masks: dict[int, list[int]]) -> torch.Tensor:
    """-inf at (row, id) for every id of every row in each mask (out of place when anything is banned)."""
    rows = [row for mask in masks for row, ids in mask.items() for _ in ids]
    if not rows:
        return logits
    cols = [token_id for mask in masks for ids in mask.values() for token_id in ids]
    index = torch.tensor([rows, cols], dtype=torch.int64)
    if logits.is_cuda:  # pinned: the copy does not wait for the GPU's queued work
        index = index.pin_memory().to(logits.device, non_blocking=True)
    return logits.index_put((index[0], index[1]), logits.new_full((), float("-inf")))  # a fill: no host copy
