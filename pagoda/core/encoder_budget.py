"""The scheduler's encoder budget: how many image tokens the vision encoder may compute per step (vLLM's
encoder budget), and which images the runner already holds encoded.

A step that reaches an image's placeholder tokens needs that image's features; the runner computes them
then unless it holds them already (worker/mm_inputs.py: kept while a request with that image runs). So the
scheduler charges an image to the step that first reaches it, and cuts a chunk before an image the step's
budget cannot pay for; the request continues from there in a later step.

Invariants:
- A step encodes at most `budget` image tokens, except that its first image is always allowed (so an image
  larger than the budget still runs, alone: vLLM's max(budget, largest item)).
- `holders[h]` are the unfinished requests that reached an image with content hash h; an image with holders
  counts as encoded. The runner keeps an image at least that long, so the scheduler never expects an image
  the runner dropped (where the two disagree, the runner simply encodes it: budgets are a bound on work,
  never on correctness).
"""

from __future__ import annotations


class EncoderBudget:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.holders: dict[bytes, set[str]] = {}
        self.left = budget
        self.encoded_this_step = False

    def begin_step(self) -> None:
        self.left, self.encoded_this_step = self.budget, False

    def fit(self, request, start: int, num_new: int) -> int:
        """How many of the `num_new` tokens from `start` the step may compute: all, or up to the first image
        it cannot encode this step (0 or less: not even the first)."""
        for image in request.mm_inputs:
            if image.offset >= start + num_new:
                break  # images are in prompt order
            if image.offset + image.length <= start:
                continue
            holders = self.holders.get(image.content_hash)
            if holders is None:
                if image.length > self.left and self.encoded_this_step:
                    return image.offset - start
                self.left -= image.length
                self.encoded_this_step = True
                holders = self.holders[image.content_hash] = set()
            holders.add(request.request_id)
        return num_new

    def release(self, request) -> None:
        """`request` finished or was preempted: it holds its images no longer."""
        for image in request.mm_inputs or ():
            holders = self.holders.get(image.content_hash)
            if holders is not None:
                holders.discard(request.request_id)
                if not holders:
                    del self.holders[image.content_hash]
