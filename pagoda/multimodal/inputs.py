"""One image of a request, as the engine carries it from the frontend to the model runner.

Invariants:
- `pixel_values` is the model's Hugging Face processor output for this one image (e.g. [3, H, W] for
  LLaVA-1.5, [patches, 3, H, W] for LLaVA-NeXT), on the CPU, and `extras` its other per-image outputs
  (LLaVA-NeXT's `image_sizes`); the runner moves them to the device when it encodes the image.
- The prompt's tokens [offset, offset + length) are this image's placeholder tokens, one per feature row
  the model's vision encoder + projector produce for it; ranges of one request never overlap.
- `content_hash` depends only on the image's pixels, mode and size and on the processor options, so two
  requests with the same image (and options) share encoder outputs and prefix-cache entries, and two
  different images never do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageInput:
    pixel_values: Any  # torch.Tensor, the processor's output for this image
    offset: int  # first placeholder position in the prompt
    length: int  # number of placeholder tokens
    content_hash: bytes
    # The processor's other per-image outputs the model's embed_images takes (e.g. LLaVA-NeXT's image_sizes).
    extras: dict = field(default_factory=dict)


def hash_image(image: Any, options: dict | None = None) -> bytes:
    """The content hash of a PIL image plus the processor options that change its features."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}:{sorted((options or {}).items())!r}".encode())
    digest.update(image.tobytes())
    return digest.digest()


def cache_salt(images: list[ImageInput]) -> bytes | None:
    """The prefix-cache root of a request with these images (None without images): every block hash of the
    request depends on its images, so the same prompt with another image never hits the cache."""
    if not images:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(image.offset.to_bytes(8, "little"))
        digest.update(image.content_hash)
    return digest.digest()
