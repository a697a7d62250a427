"""The model runner's M-RoPE positions (Qwen2.5-VL): per running request with images, the three position rows
(temporal, height, width) of its prompt, and the offset of every later token.

Invariants:
- A request with images holds its prompt's positions [3, num_prompt_tokens] and `delta` (the model's
  `mrope_positions`, transformers' get_rope_index); its token at sequence position p >= num_prompt_tokens
  has all three rows p + delta. A request without images has plain positions (all rows p) and holds nothing.
- `step_positions` returns None when no request of the step holds anything (the runner's 1-D positions
  stand), int64 [T] when every token of the step has three equal rows (decode steps: 1-D rotary at p + delta
  is exactly M-RoPE there, so CUDA graphs replay as usual), else int64 [3, T].
- Positions are only ever the rotary's: KV slots and sequence lengths keep the sequence positions.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.worker.input_batch import to_device


class MRopePositions:
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.prompts: dict[str, tuple[np.ndarray, int]] = {}  # request id -> (prompt positions [3, P], delta)

    def add(self, req_id: str, token_ids: list[int], num_prompt_tokens: int, images: list | None) -> None:
        if not images:
            return
        grids = [np.asarray(image.extras["image_grid_thw"]).reshape(3).tolist() for image in images]
        self.prompts[req_id] = self.model.mrope_positions(self.model.config, token_ids[:num_prompt_tokens], grids)

    def remove(self, req_id: str) -> None:
        self.prompts.pop(req_id, None)

    def step_positions(self, req_ids: list[str], starts: np.ndarray, counts: np.ndarray) -> torch.Tensor | None:
        held = [self.prompts.get(r) for r in req_ids]
        if not any(h is not None for h in held):
            return None
        pieces = []
        for entry, start, count in zip(held, starts.tolist(), counts.tolist()):
            seq = np.arange(start, start + count, dtype=np.int64)
            if entry is None:
                pieces.append(np.broadcast_to(seq, (3, count)))
                continue
            prompt, delta = entry
            rows = np.broadcast_to(seq + delta, (3, count)).copy()
            inside = seq < prompt.shape[1]
            rows[:, inside] = prompt[:, seq[inside]]
            pieces.append(rows)
        rows = np.concatenate(pieces, axis=1)
        if (rows[0] == rows[1]).all() and (rows[0] == rows[2]).all():
            return to_device(np.ascontiguousarray(rows[0]), self.device)
        return to_device(np.ascontiguousarray(rows), self.device)
