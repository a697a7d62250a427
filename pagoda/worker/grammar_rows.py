"""Applying a step's structured-output bitmask to the logits rows its grammar requests sample.

Invariants:
- `grammar` = ([(structured request id, its number of bitmask rows)] in the step's order, the int32 bitmask
  [rows, ceil(vocab / 32)]); request sample_ids[j]'s sampled positions are logits rows first_row[j]..; a
  structured request missing from sample_ids (failed meanwhile) has its bitmask rows skipped.
- The bitmask must have exactly the rows its requests sample (else RuntimeError: the engine and the runner
  disagree about the step).
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.worker.input_batch import to_device


def apply_grammar(logits: torch.Tensor, sample_ids: list[str], first_row: np.ndarray,
                  grammar: tuple[list[tuple[str, int]], np.ndarray] | None, device: torch.device) -> None:
    """Mask `logits` in place (no-op without a grammar)."""
    if grammar is None:
        return
    from pagoda.sample.token_bitmask import apply_token_bitmask_

    structured, bitmask = grammar
    num_rows = np.array([n for _, n in structured], dtype=np.int64)
    if int(num_rows.sum()) != bitmask.shape[0]:
        raise RuntimeError(f"grammar bitmask has {bitmask.shape[0]} rows, the step samples {int(num_rows.sum())} "
                           "under grammars")
    if bitmask.shape[0] == logits.shape[0] and [r for r, _ in structured] == sample_ids:
        apply_token_bitmask_(logits, to_device(bitmask, device))  # every sampled row, in order
        return
    where = {req_id: j for j, req_id in enumerate(sample_ids)}
    mask_rows, logit_rows = [], []
    cursor = 0
    for (req_id, count) in structured:
        j = where.get(req_id)
        if j is not None:  # not failed meanwhile
            mask_rows.append(np.arange(cursor, cursor + count))
            logit_rows.append(first_row[j] + np.arange(count))
        cursor += count
    if mask_rows:
        masks = bitmask[np.concatenate(mask_rows)]
        apply_token_bitmask_(logits, to_device(masks, device),
                             to_device(np.concatenate(logit_rows).astype(np.int64), device))
