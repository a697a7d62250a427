"""Images in a prompt -> the model's token ids (placeholders expanded) and one ImageInput per image.

The model's own Hugging Face processor (`AutoProcessor` from the model folder) does the work: it expands
each image token of the text to the number of feature rows the model makes of that image and
preprocesses the pixels; nothing here re-implements it.

Invariants:
- Only models whose class accepts images (`supports_images`) take `multi_modal_data`; anything else, and any
  key other than "image", a non-image value, or images the prompt has no place for, is a ValueError that
  names the field.
- The returned ImageInputs are in prompt order, their placeholder ranges match the processor's ids exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pagoda.multimodal.inputs import ImageInput, hash_image

MODALITIES = ("image",)


@dataclass
class ProcessedPrompt:
    """A prompt whose images the processor already expanded (chat: rendered by the chat template first)."""

    text: str
    token_ids: list[int]
    images: list[ImageInput]


def images_of(multi_modal_data: Any) -> list:
    """The PIL images of `multi_modal_data` ({"image": image or [images]}); ValueError naming what is wrong."""
    if not isinstance(multi_modal_data, dict):
        raise ValueError(f"multi_modal_data must be a dict like {{'image': <PIL.Image>}}, got "
                         f"{type(multi_modal_data).__name__}")
    for key in multi_modal_data:
        if key not in MODALITIES:
            raise ValueError(f"multi_modal_data[{key!r}]: modality {key!r} is not supported yet; supported: "
                             f"{list(MODALITIES)}")
    images = multi_modal_data.get("image")
    if images is None:
        return []
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    from PIL import Image

    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"multi_modal_data['image'][{i}] must be a PIL.Image.Image, got {type(image).__name__}")
    return images


class MultiModalProcessor:
    """The model's processor, loaded on first use."""

    def __init__(self, model_config: Any) -> None:
        self.model_config = model_config
        self._processor = None
        hf_config = model_config.hf_config
        self.image_token_id = getattr(hf_config, "image_token_index", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(hf_config, "image_token_id", None)

    @property
    def processor(self):
        if self._processor is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.model_config.tokenizer_path,
                                                            trust_remote_code=self.model_config.trust_remote_code)
        return self._processor

    @property
    def image_placeholder(self) -> str:
        """The text that stands for one image in a prompt (the processor's image token, e.g. "<image>")."""
        return getattr(self.processor, "image_token", None) or "<image>"

    def process(self, text: str, images: list, options: dict | None = None, add_special_tokens: bool = True
                ) -> tuple[list[int], list[ImageInput]]:
        """(prompt token ids with each image's placeholders expanded, one ImageInput per image)."""
        options = dict(options or {})
        try:
            out = self.processor(text=text, images=images or None, return_tensors="pt",
                                 add_special_tokens=add_special_tokens, **options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"multi_modal_data: the model's processor refused the prompt and its "
                             f"{len(images)} image(s): {exc}") from exc
        ids = out["input_ids"][0].tolist()
        if not images:
            return ids, []
        pixel_values = out["pixel_values"]
        if len(pixel_values) != len(images):
            raise ValueError(f"multi_modal_data: the processor made pixels for {len(pixel_values)} of {len(images)} "
                             "images")
        extras = {key: value for key, value in out.items()
                  if key not in ("input_ids", "attention_mask", "pixel_values", "token_type_ids")
                  and hasattr(value, "shape") and len(value) == len(images)}
        ranges = _placeholder_ranges(np.flatnonzero(np.asarray(ids) == self.image_token_id), len(images))
        inputs = [ImageInput(pixel_values=pixel_values[i], offset=offset, length=length,
                             content_hash=hash_image(image, options), extras={k: v[i] for k, v in extras.items()})
                  for i, (image, (offset, length)) in enumerate(zip(images, ranges))]
        return ids, inputs


def _placeholder_ranges(where: np.ndarray, num_images: int) -> list[tuple[int, int]]:
    """(offset, length) of each image's placeholder tokens: one contiguous run per image; runs of adjacent
    images (no text between them) split evenly, which holds for models whose images all expand alike."""
    if len(where) == 0:
        raise ValueError(f"multi_modal_data: the prompt holds no image placeholder for its {num_images} image(s); "
                         "put the model's image token where each image goes")
    breaks = np.flatnonzero(np.diff(where) != 1) + 1
    runs = [(int(run[0]), len(run)) for run in np.split(where, breaks)]
    if len(runs) == num_images:
        return runs
    if len(where) % num_images == 0:
        length = len(where) // num_images
        ranges = [(int(where[i * length]), length) for i in range(num_images)]
        if all(where[i * length + length - 1] - offset + 1 == length for i, (offset, _) in enumerate(ranges)):
            return ranges
    raise ValueError(f"multi_modal_data: the prompt's {len(where)} image placeholder tokens do not split into its "
                     f"{num_images} image(s); put one image token per image in the prompt, with text between "
                     "images")
