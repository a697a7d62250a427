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
# Processor outputs that describe the whole prompt, not one image each.
NOT_PER_IMAGE = ("input_ids", "attention_mask", "pixel_values", "token_type_ids", "mm_token_type_ids")


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


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    """The folder's `AutoProcessor`. Image-and-video processors (the Qwen2-VL family) also load a video
    processor, which needs torchvision; without it, the same processor class is built from the folder's
    image processor and tokenizer alone (images work the same, videos are not supported yet anyway)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        return _images_only_processor(path, trust_remote_code, exc)


def _images_only_processor(path: str, trust_remote_code: bool, cause: Exception) -> Any:
    import json
    import os

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    name = None
    for config_file in ("processor_config.json", "preprocessor_config.json"):
        if os.path.isfile(os.path.join(path, config_file)):
            with open(os.path.join(path, config_file)) as f:
                name = name or json.load(f).get("processor_class")
    cls = getattr(transformers, name, None) if name else None
    if cls is None or "video_processor" not in cls.get_attributes():
        raise cause

    class ImagesOnly(cls):
        @classmethod
        def get_attributes(klass):
            return [a for a in super().get_attributes() if a != "video_processor"]

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    chat_template = getattr(tokenizer, "chat_template", None)
    for template_file, key in (("chat_template.jinja", None), ("chat_template.json", "chat_template")):
        file = os.path.join(path, template_file)
        if os.path.isfile(file):
            with open(file) as f:
                chat_template = f.read() if key is None else json.load(f)[key]
            break
    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code),
                      tokenizer=tokenizer, chat_template=chat_template)


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
            self._processor = load_processor(self.model_config.tokenizer_path, self.model_config.trust_remote_code)
        return self._processor

    @property
    def image_placeholder(self) -> str:
        """The text that stands for one image in a prompt (the processor's image token, e.g. "<image>")."""
        return getattr(self.processor, "image_token", None) or "<image>"

    def process(self, text: str, images: list, options: dict | None = None, add_special_tokens: bool = True
                ) -> tuple[list[int], list[ImageInput]]:
        """(prompt token ids with each image's placeholders expanded, one ImageInput per image); `options`
        override the engine's --mm-processor-kwargs key by key."""
        options = {**getattr(self.model_config, "mm_processor_kwargs", {}), **(options or {})}
        try:
            out = self.processor(text=text, images=images or None, return_tensors="pt",
                                 add_special_tokens=add_special_tokens, **options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"multi_modal_data: the model's processor refused the prompt and its "
                             f"{len(images)} image(s): {exc}") from exc
        ids = out["input_ids"][0].tolist()
        if not images:
            return ids, []
        pixel_values = _per_image_pixels(out, len(images))
        extras = {key: value for key, value in out.items()
                  if key not in NOT_PER_IMAGE and hasattr(value, "shape") and len(value) == len(images)}
        ranges = _placeholder_ranges(np.flatnonzero(np.asarray(ids) == self.image_token_id), len(images))
        inputs = [ImageInput(pixel_values=pixel_values[i], offset=offset, length=length,
                             content_hash=hash_image(image, options), extras={k: v[i] for k, v in extras.items()})
                  for i, (image, (offset, length)) in enumerate(zip(images, ranges))]
        return ids, inputs


def _per_image_pixels(out: Any, num_images: int) -> list:
    """The processor's pixels split per image: a batch [N, ...] as it is, or the patch rows of all images
    concatenated [sum of t·h·w, D] (Qwen2-VL family) cut by `image_grid_thw`."""
    pixel_values = out["pixel_values"]
    grids = out.get("image_grid_thw")
    if grids is not None and len(grids) == num_images and pixel_values.dim() == 2:
        sizes = [int(t) * int(h) * int(w) for t, h, w in grids.tolist()]
        if sum(sizes) == len(pixel_values):
            return list(pixel_values.split(sizes))
    if len(pixel_values) != num_images:
        raise ValueError(f"multi_modal_data: the processor made pixels for {len(pixel_values)} of {num_images} "
                         "images")
    return pixel_values


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
