"""Repetition, frequency and presence penalties, batched over the rows that use them (vLLM's semantics).

For a row with prompt tokens P and output tokens O so far:
- repetition_penalty r (transformers' and vLLM's): every token id that occurs in P or O has its logit
  divided by r when positive and multiplied by r otherwise;
- frequency_penalty f and presence_penalty p (OpenAI's): logit -= f * count(id in O) + p * [id in O].
The prompt counts only for the repetition penalty, as in vLLM.

Invariants:
- Counts come from one scatter_add over a padded [P, L] token tensor (pad id = V, dropped): no
  Python loop over rows or over the vocabulary, no host sync.
- Only the listed rows are touched; the function is out of place.
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
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)
        return cls(
            rows=to(rows, torch.int64),
            token_ids=to(token_ids[:, :width], torch.int64),
            num_prompt=to(num_prompt, torch.int64),
            num_tokens=to(num_tokens, torch.int64),
            presence=to(presence, torch.float32),
            frequency=to(frequency, torch.float32),
            repetition=to(repetition, torch.float32),
        )


def token_counts(token_ids: torch.Tensor, keep: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[P, V] counts of each id among token_ids[i, j] with keep[i, j] (float32)."""
    padded = torch.where(keep, token_ids, torch.full_like(token_ids, vocab_size))
    counts = torch.zeros(token_ids.shape[0], vocab_size + 1, dtype=torch.float32, device=token_ids.device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, inputs: PenaltyInputs) -> torch.Tensor:
    """Penalized float32 logits (a new tensor; rows outside `inputs.rows` are copied unchanged)."""
    vocab = logits.shape[1]
    rows = logits.index_select(0, inputs.rows)
    columns = torch.arange(inputs.token_ids.shape[1], device=logits.device).unsqueeze(0)
    in_prompt = columns < inputs.num_prompt.unsqueeze(1)
    in_output = (columns >= inputs.num_prompt.unsqueeze(1)) & (columns < inputs.num_tokens.unsqueeze(1))
    output_counts = token_counts(inputs.token_ids, in_output, vocab)
    seen = (token_counts(inputs.token_ids, in_prompt, vocab) > 0) | (output_counts > 0)
    repetition = inputs.repetition.unsqueeze(1)
    penalized = torch.where(rows > 0, rows / repetition, rows * repetition)
    rows = torch.where(seen, penalized, rows)
    rows = rows - inputs.frequency.unsqueeze(1) * output_counts
    rows = rows - inputs.presence.unsqueeze(1) * (output_counts > 0).to(torch.float32)
    return logits.index_copy(0, inputs.rows, rows)
