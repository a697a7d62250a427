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
- On CUDA each encoder call is bracketed by timing events (never a host sync on the step's path);
  `encoder_seconds()` sums them, for the benchmarks.
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
        self._encoder_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # not yet summed
        self._encoder_total = 0.0  # seconds of the encoder calls already summed

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
            timed = self._timer()
            features = self.model.embed_images(pixels, **extras)  # [N, tokens, H], or one [tokens_i, H] per image
            if timed is not None:
                timed[1].record()
            for image, rows in zip(group, features):
                if rows.shape[0] != image.length:
                    raise RuntimeError(f"the vision encoder made {rows.shape[0]} feature rows of an image the "
                                       f"processor gave {image.length} placeholder tokens")
                self.cache[image.content_hash] = rows

    def _timer(self) -> tuple | None:
        if self.device.type != "cuda":
            return None
        if len(self._encoder_events) > 256:  # fold the finished ones, so a long-running server keeps few
            finished = [pair[1].query() for pair in self._encoder_events]
            self._encoder_total += sum(start.elapsed_time(end) for (start, end), f in
                                       zip(self._encoder_events, finished) if f) / 1e3
            self._encoder_events = [pair for pair, f in zip(self._encoder_events, finished) if not f]
        pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        pair[0].record()
        self._encoder_events.append(pair)
        return pair

    def encoder_seconds(self, reset: bool = False) -> float:
        """GPU seconds spent in the vision encoder since the last reset (waits for the calls in flight); 0.0 off
        CUDA."""
        for start, end in self._encoder_events:
            end.synchronize()
            self._encoder_total += start.elapsed_time(end) / 1e3
        self._encoder_events = []
        total = self._encoder_total
        if reset:
            self._encoder_total = 0.0
        return total
