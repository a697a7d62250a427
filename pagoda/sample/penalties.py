"""Repetition, frequency and presence penalties, batched over the rows that use them (vLLM's semantics).

For a row with prompt tokens P and output tokens O so far:
- repetition_penalty r (transformers' and vLLM's): every token id that occurs in P or O has its logit
  divided by r when positive and multiplied by r otherwise;
- frequency_penalty f and presence_penalty p (OpenAI's): logit -= f * count(id in O) + p * [id in O].
The prompt counts only for the repetition penalty, as in vLLM.

Invariants:
- Work is [P, L] (the rows' tokens), never [P, V]: gathers and scatters at the rows' own token ids;
  no Python loop over rows or over the vocabulary, no host sync; results do not depend on the order
  of the scatters (deterministic).
- Only the listed rows' seen tokens are touched: `apply_penalties` out of place, `apply_penalties_`
  in place (the sampler's float32 copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PenaltyInputs:
    """The rows of a batch that use a penalty, and their tokens.

    `token_ids[i, :num_prompt[i]]` is row i's prompt and `token_ids[i, num_prompt[i]:num_tokens[i]]` its
    output so far; columns past num_tokens[i] are ignored (any value).
    """

    rows: torch.Tensor  # [P] int64: rows of the logits
    token_ids: torch.Tensor  # [P, L] int64
    num_prompt: torch.Tensor  # [P] int64
    num_tokens: torch.Tensor  # [P] int64
    presence: torch.Tensor  # [P] float32
    frequency: torch.Tensor  # [P] float32
    repetition: torch.Tensor  # [P] float32

    @classmethod
    def from_arrays(cls, rows: np.ndarray, token_ids: np.ndarray, num_prompt: np.ndarray, num_tokens: np.ndarray,
                    presence: np.ndarray, frequency: np.ndarray, repetition: np.ndarray,
                    device: torch.device) -> "PenaltyInputs":
        """From host arrays (numpy); `token_ids` may be wider than needed (it is cut at max(num_tokens))."""
        width = max(int(num_tokens.max()), 1) if len(num_tokens) else 1
        def to(array, dtype):
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
            if device.type != "cuda":
                return tensor.to(device)
            # Through pinned memory, non-blocking: a copy from pageable memory makes the host wait for
            # everything queued on the GPU (the step in flight), which would undo async scheduling.
            return tensor.pin_memory().to(device, non_blocking=True)
        return cls(
            rows=to(rows, torch.int64),
            token_ids=to(token_ids[:, :width], torch.int64),
            num_prompt=to(num_prompt, torch.int64),
            num_tokens=to(num_tokens, torch.int64),
            presence=to(presence, torch.float32),
            frequency=to(frequency, torch.float32),
            repetition=to(repetition, torch.float32),
        )


def apply_penalties(logits: torch.Tensor, inputs: PenaltyInputs) -> torch.Tensor:
    """Penalized float32 logits (a new tensor; rows outside `inputs.rows` are copied unchanged)."""
    return apply_penalties_(logits.to(torch.float32, copy=True).contiguous(), inputs)


def apply_penalties_(logits: torch.Tensor, inputs: PenaltyInputs) -> torch.Tensor:
    """Apply the penalties in place to contiguous float32 `logits` [R, V] (returned): only the entries of
    the rows' own tokens are read and written ([P, L] work, never [P, V])."""
    if logits.dtype != torch.float32 or not logits.is_contiguous():
        raise ValueError(f"apply_penalties_ needs contiguous float32 logits, got {logits.dtype}")
    vocab = logits.shape[1]
    flat = logits.view(-1)
    columns = torch.arange(inputs.token_ids.shape[1], device=logits.device).unsqueeze(0)
    num_tokens = inputs.num_tokens.unsqueeze(1)
    valid = columns < num_tokens
    in_output = valid & (columns >= inputs.num_prompt.unsqueeze(1))
    ids = inputs.token_ids.clamp(0, vocab - 1)
    # Positions past a row's tokens point at its first token, so every write of a row hits one of its
    # own tokens with the same value as that token's real positions (duplicates agree: deterministic).
    ids = torch.where(valid, ids, ids[:, :1])
    index = inputs.rows.unsqueeze(1) * vocab + ids  # [P, L] into the flat logits
    # Repetition over prompt + output: every position of a token computes the same value from the
    # original logit (gathered before any write).
    original = flat[index]
    repetition = inputs.repetition.unsqueeze(1)
    penalized = torch.where(original > 0, original / repetition, original * repetition)
    penalized = torch.where(num_tokens > 0, penalized, original)  # a row without tokens is unchanged
    flat.scatter_(0, index.view(-1), penalized.view(-1))
    # Frequency and presence over the output: in each row's sorted output ids, the first position of a
    # run of equal ids adds -(f * run length + p) once; every other position adds 0 (exact, any order).
    keys = torch.where(in_output, ids, vocab + columns)  # non-output positions: unique keys >= V
    keys, order = keys.sort(dim=1)
    first = torch.ones_like(keys, dtype=torch.bool)
    first[:, 1:] = keys[:, 1:] != keys[:, :-1]
    group = first.cumsum(dim=1) - 1
    run = torch.zeros_like(keys).scatter_add_(1, group, torch.ones_like(keys)).gather(1, group)
    delta = -(inputs.frequency.unsqueeze(1) * run + inputs.presence.unsqueeze(1))
    delta = torch.where(first & (keys < vocab), delta, torch.zeros_like(delta))
    flat.scatter_add_(0, index.gather(1, order).view(-1), delta.view(-1))
    return logits
