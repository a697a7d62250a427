"""The model runner's images: each running request's ImageInputs, an encoder cache, and the merge of image
features into a step's token embeddings.

Invariants:
- An image's features (vision encoder + projector, [its placeholder count, hidden]) are computed once while any
  request holding it runs, keyed by its content hash: a prefill that chunked prefill splits over several
  steps, and other requests with the same image, reuse them. An entry is dropped when the last request
  holding that image leaves the runner (finished, aborted, preempted: a preempted request recomputes).
- A step's embeddings are the text embeddings of its input ids, with every placeholder position the step
  computes replaced by the matching row of its image's features (chunks may start or end inside an image).
  A step without placeholder positions gets None: the model embeds its ids itself (and decode steps replay
  CUDA graphs as usual).
"""

from __future__ import annotations

import numpy as np
import torch


class MultiModalInputs:
    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.images: dict[str, list] = {}  # request id -> its ImageInputs
        self.cache: dict[bytes, torch.Tensor] = {}  # content hash -> features [length, hidden] on the device
        self.holders: dict[bytes, set[str]] = {}  # content hash -> the running requests with that image

    def add(self, req_id: str, images: list) -> None:
        self.images[req_id] = images
        for image in images:
            self.holders.setdefault(image.content_hash, set()).add(req_id)

    def remove(self, req_id: str) -> None:
        for image in self.images.pop(req_id, ()):
            holders = self.holders.get(image.content_hash)
            if holders is not None:
                holders.discard(req_id)
                if not holders:
                    del self.holders[image.content_hash]
                    self.cache.pop(image.content_hash, None)

    def embeddings(self, req_ids: list[str], starts: np.ndarray, counts: np.ndarray, query_start: np.ndarray,
                   input_ids: torch.Tensor) -> torch.Tensor | None:
        """The step's input embeddings [T, hidden] when it computes any placeholder position, else None."""
        pieces = []  # (flat index of the first token, image, first feature row, end feature row)
        for i, req_id in enumerate(req_ids):
            for image in self.images.get(req_id, ()):
                begin = max(int(starts[i]), image.offset)
                end = min(int(starts[i] + counts[i]), image.offset + image.length)
                if begin < end:
                    pieces.append((int(query_start[i]) + begin - int(starts[i]), image, begin - image.offset,
                                   end - image.offset))
        if not pieces:
            return None
        self._encode([image for _, image, _, _ in pieces if image.content_hash not in self.cache])
        embeds = self.model.embed_input_ids(input_ids)
        for at, image, first, end in pieces:
            embeds[at:at + end - first] = self.cache[image.content_hash][first:end].to(embeds.dtype)
        return embeds

    def _encode(self, images: list) -> None:
        unique = list({image.content_hash: image for image in images}.values())
        by_shape: dict[tuple, list] = {}
        for image in unique:
            key = (tuple(image.pixel_values.shape),
                   tuple((name, tuple(value.shape)) for name, value in sorted(image.extras.items())))
            by_shape.setdefault(key, []).append(image)
        for group in by_shape.values():
            pixels = torch.stack([image.pixel_values for image in group]).to(self.device, self.dtype)
            extras = {name: torch.stack([image.extras[name] for image in group]).to(self.device)
                      for name in group[0].extras}
            features = self.model.embed_images(pixels, **extras)  # [N, tokens, H], or one [tokens_i, H] per image
            for image, rows in zip(group, features):
                if rows.shape[0] != image.length:
                    raise RuntimeError(f"the vision encoder made {rows.shape[0]} feature rows of an image the "
                                       f"processor gave {image.length} placeholder tokens")
                self.cache[image.content_hash] = rows
