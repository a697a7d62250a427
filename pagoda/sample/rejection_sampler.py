"""The speculative-decoding verification sampler: vLLM's rejection sampling over a flat batch.

Layout (row r of R requests, k_r >= 0 drafts): the target logits hold k_r + 1 contiguous positions
per row, position j < k_r the target's distribution for the token that draft j proposes, position
k_r the "bonus" position after every draft; the drafts lie back to back in `draft_token_ids`.

Method (Leviathan et al., Chen et al.; vLLM's rejection sampler):
- p_j is what the Sampler would sample from for the row (sampler.py's torch path): the processed
  logits / temperature, then min-p, top-k, top-p with the row's settings at each of its positions,
  then a float32 softmax. q_j is the draft model's distribution (`draft_probs`), or one-hot on the
  draft when drafts are deterministic (n-gram).
- A random row accepts draft j iff u_j * q_j(d_j) < p_j(d_j), u_j ~ U[0, 1); at its first rejection it
  emits a draw from normalize(max(p_j - q_j, 0)) (one-hot q: p_j without d_j) and stops; with every
  draft accepted it emits a draw from the bonus position's p. Each emitted token is then distributed
  exactly as non-speculative sampling from p would give it.
- A greedy row accepts while d_j == argmax(logits_j) (ties to the lowest id, as torch.argmax), then
  emits the argmax at its first mismatch or at the bonus position: token-identical to greedy decoding.

Invariants:
- Row r of the result holds its accepted drafts and then one token, 1 <= n_r <= k_r + 1 entries,
  padded with -1 to max_k + 1 columns.
- A seeded row draws from its own generator only, and the same amount whatever the batch (k_r
  uniforms, then V exponentials for its one categorical draw), so its tokens do not depend on the
  other rows. Unseeded rows share torch's default generator; an all-greedy batch draws nothing.
- No host sync and no Python loop over rows or positions, except the loop over seeded rows: the
  accepted count is a cumprod over the [R, max_k] accept matrix, and the single categorical draw of
  each row (recovered or bonus) is an exponential race on the [R, V] distributions gathered at each
  row's stopping position.
- A recovered distribution that rounding leaves all zero (unreachable in exact arithmetic) falls
  back to p_j, so no row ever races on NaNs.
"""

from __future__ import annotations

from itertools import accumulate

import numpy as np
import torch

from pagoda.sample.metadata import SamplingMetadata
from pagoda.sample.race import exponential_race
from pagoda.sample.sampler import apply_min_p, apply_top_k_top_p


def rejection_sample(
    target_logits: torch.Tensor,
    num_draft_tokens: list[int],
    draft_token_ids: torch.Tensor,
    metadata: SamplingMetadata,
    draft_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Output tokens [R, max_k + 1] int64 (-1 padded) of verifying each row's drafts against the
    target: `target_logits` [T, V] are processed logits (Sampler.process_logits, any float dtype),
    T = sum(k_r + 1); `draft_token_ids` [sum k_r]; `draft_probs` [sum k_r, V] or None (one-hot q)."""
    _check_shapes(target_logits, num_draft_tokens, draft_token_ids, metadata, draft_probs)
    device = target_logits.device
    rows, num_drafts = len(num_draft_tokens), draft_token_ids.shape[0]
    if rows == 0:  # an empty batch's metadata is both all_greedy and all_random
        return torch.empty(0, 1, dtype=torch.int64, device=device)
    max_k = max(num_draft_tokens, default=0)
    draft_start = [s - k for s, k in zip(accumulate(num_draft_tokens), num_draft_tokens)]

    # Index tensors from the host-side counts, built with numpy and sent in one copy (no host sync).
    k_host = np.asarray(num_draft_tokens, dtype=np.int64)
    first_host = np.asarray(draft_start, dtype=np.int64)
    draft_row_host = np.repeat(np.arange(rows), k_host)
    indices = _to_device(np.concatenate([
        k_host, first_host, draft_row_host,
        np.arange(num_drafts) - first_host[draft_row_host],  # draft_col
        np.arange(num_drafts) + draft_row_host,  # draft_pos: each earlier row adds its bonus position
        np.repeat(np.arange(rows), k_host + 1),  # position_row
        np.cumsum(k_host + 1) - (k_host + 1),  # row_start
    ]), device)
    k, first_draft, draft_row, draft_col, draft_pos, position_row, row_start = torch.split(
        indices, [rows, rows, num_drafts, num_drafts, num_drafts, num_drafts + rows, rows])
    draft_ids = draft_token_ids.to(device=device, dtype=torch.int64)

    logits = target_logits.to(torch.float32)
    greedy_ids = None if metadata.all_random else logits.argmax(dim=-1)
    probs = None if metadata.all_greedy else _target_probs(logits, metadata, position_row)
    is_greedy = metadata.temperature <= 0.0

    if probs is None:
        accept = draft_ids == greedy_ids[draft_pos]
    else:
        uniforms = _uniforms(num_drafts, draft_start, num_draft_tokens, metadata.generators, device)
        p_draft = probs[draft_pos, draft_ids]
        q_draft = 1.0 if draft_probs is None else draft_probs.to(torch.float32).gather(1, draft_ids.unsqueeze(1))[:, 0]
        accept = uniforms * q_draft < p_draft
        if greedy_ids is not None:
            accept = torch.where(is_greedy[draft_row], draft_ids == greedy_ids[draft_pos], accept)

    accepted = torch.zeros(rows, max_k, dtype=torch.int64, device=device)
    accepted[draft_row, draft_col] = accept.to(torch.int64)
    num_accepted = accepted.cumprod(dim=1).sum(dim=1)  # leading accepted drafts of each row
    final_pos = row_start + num_accepted

    if probs is None:
        final = greedy_ids[final_pos]
    else:
        final = _recovered_or_bonus(probs[final_pos], num_accepted < k, first_draft + num_accepted,
                                    draft_ids, draft_probs, metadata.generators)
        if greedy_ids is not None:
            final = torch.where(is_greedy, greedy_ids[final_pos], final)

    out = torch.full((rows, max_k + 1), -1, dtype=torch.int64, device=device)
    out[draft_row, draft_col] = draft_ids
    columns = torch.arange(max_k + 1, device=device)
    out = out.masked_fill(columns >= num_accepted.unsqueeze(1), -1)
    return out.scatter_(1, num_accepted.unsqueeze(1), final.unsqueeze(1))


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device` without making the host wait (pinned memory, non-blocking on CUDA)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def _check_shapes(target_logits: torch.Tensor, num_draft_tokens: list[int], draft_token_ids: torch.Tensor,
                  metadata: SamplingMetadata, draft_probs: torch.Tensor | None) -> None:
    if target_logits.dim() != 2:
        raise ValueError(f"target_logits must be [T, V], got shape {tuple(target_logits.shape)}")
    if len(num_draft_tokens) != metadata.num_rows:
        raise ValueError(f"num_draft_tokens has {len(num_draft_tokens)} rows, the metadata {metadata.num_rows}")
    if any(k < 0 for k in num_draft_tokens):
        raise ValueError(f"num_draft_tokens must be >= 0, got {num_draft_tokens}")
    num_drafts = sum(num_draft_tokens)
    positions = num_drafts + len(num_draft_tokens)
    if target_logits.shape[0] != positions:
        raise ValueError(f"target_logits has {target_logits.shape[0]} positions, expected sum(k_r + 1) = {positions}")
    if draft_token_ids.dim() != 1 or draft_token_ids.shape[0] != num_drafts:
        raise ValueError(f"draft_token_ids must be [{num_drafts}] (sum of num_draft_tokens), "
                         f"got shape {tuple(draft_token_ids.shape)}")
    if draft_probs is not None and tuple(draft_probs.shape) != (num_drafts, target_logits.shape[1]):
        raise ValueError(f"draft_probs must be [{num_drafts}, {target_logits.shape[1]}] (drafts, vocab), "
                         f"got shape {tuple(draft_probs.shape)}")


def _target_probs(logits: torch.Tensor, metadata: SamplingMetadata, position_row: torch.Tensor) -> torch.Tensor:
    """p at every position [T, V]: Sampler.sample's torch path with each row's settings at each of its
    positions (greedy rows get temperature 1 here; their probabilities are not used)."""
    temperature = metadata.temperature
    temperature = torch.where(temperature <= 0.0, torch.ones_like(temperature), temperature)
    logits = logits / temperature[position_row].unsqueeze(1)
    if not metadata.no_min_p:
        logits = apply_min_p(logits, metadata.min_p[position_row])
    logits = apply_top_k_top_p(logits, None if metadata.no_top_k else metadata.top_k[position_row],
                               None if metadata.no_top_p else metadata.top_p[position_row])
    return torch.softmax(logits, dim=-1)


def _uniforms(num_drafts: int, draft_start: list[int], num_draft_tokens: list[int],
              generators: dict[int, torch.Generator], device: torch.device) -> torch.Tensor:
    """u [sum k_r] in [0, 1), each seeded row's k_r from its own generator."""
    uniforms = torch.empty(num_drafts, dtype=torch.float32, device=device)
    if len(generators) < len(num_draft_tokens):
        uniforms.uniform_()
    for row, generator in generators.items():
        start = draft_start[row]
        uniforms[start:start + num_draft_tokens[row]].uniform_(generator=generator)
    return uniforms


def _recovered_or_bonus(p_final: torch.Tensor, rejected: torch.Tensor, rejected_draft: torch.Tensor,
                        draft_ids: torch.Tensor, draft_probs: torch.Tensor | None,
                        generators: dict[int, torch.Generator]) -> torch.Tensor:
    """One draw per row [R] from p at its stopping position: max(p - q, 0) where the row stopped at a
    rejected draft (q of that draft), p itself at the bonus position. The race needs no
    normalization: argmax(scores / q) is unchanged by scaling a row."""
    if draft_ids.numel() == 0:  # no drafts anywhere: every row is at its bonus position
        return exponential_race(p_final, generators)
    rejected_draft = rejected_draft.clamp(max=draft_ids.shape[0] - 1)  # rows at the bonus have no such draft
    if draft_probs is None:
        q = torch.zeros_like(p_final).scatter_(1, draft_ids[rejected_draft].unsqueeze(1), 1.0)
    else:
        q = draft_probs.to(torch.float32)[rejected_draft]
    recovered = (p_final - q * rejected.unsqueeze(1)).clamp_min_(0.0)
    empty = recovered.sum(dim=-1, keepdim=True) <= 0.0
    return exponential_race(torch.where(empty, p_final, recovered), generators)
