"""A chat request's images: the image token a rendered chat uses for the model, and loading + processing the images
its content parts name (data:, http(s)://, file:// under --allowed-local-media-path; multimodal/media.py).

Invariants:
- `process` runs in a worker thread (fetches and pixel work stay off the event loop) and turns every bad image,
  option or count into a 400 APIError naming the content part or field.
"""

from __future__ import annotations

from typing import Any

from pagoda.entrypoints.openai.errors import APIError


def image_placeholder(engine: Any) -> str | None:
    """The text standing for one image in a rendered chat (None: the model takes no images)."""
    from pagoda.model_executor.models.registry import accepts_images

    if not accepts_images(engine.config.model.architecture):
        return None
    return engine.processor.mm_processor.image_placeholder


def process(engine: Any, text: str, media: list, options: Any = None) -> Any:
    """The rendered chat `text` with its images ((image_url value, where) pairs) -> a ProcessedPrompt."""
    from pagoda.multimodal.media import load_image_url

    if options is not None and not isinstance(options, dict):
        raise APIError(f"mm_processor_kwargs must be an object, got {type(options).__name__}", 400,
                       "mm_processor_kwargs")
    allowed = engine.config.model.allowed_local_media_path
    try:
        images = []
        for value, where in media:
            if not isinstance(value, str):
                raise ValueError(f"{where}: an image part needs an image URL string (data:, http(s):// or file://)")
            images.append(load_image_url(value, where, allowed_local_media_path=allowed))
        return engine.processor.process_chat_images(text, images, options)
    except ValueError as exc:
        raise APIError(str(exc), 400, "messages") from None
