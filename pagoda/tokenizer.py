"""Loading Hugging Face tokenizers and rendering chat templates, offline.

Invariants:
- Nothing here touches the network: `get_tokenizer` resolves a folder or the local Hugging Face cache
  only, and a failure is a ValueError naming the `tokenizer` field and the path it tried.
- `apply_chat_template` tokenizes the rendered text with `add_special_tokens=False`: a chat template
  writes BOS itself when the model wants one, so BOS is never added twice.
- A chat template is a Jinja string. A template given by the caller wins over the tokenizer's own;
  with neither, rendering raises ValueError (naming `chat_template`) instead of guessing a format.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

_TOKENIZER_MODES = ("auto", "slow", "fast")
_JINJA_MARKERS = ("{{", "{%", "{#")


def get_tokenizer(
    path: str,
    tokenizer_mode: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """Load the tokenizer at `path` (a folder, or a hub id already in the local cache).

    `tokenizer_mode`: "auto"/"fast" load the fast (Rust `tokenizers`) tokenizer, "slow" asks for the
    Python one. The chat template is read from `tokenizer_config.json` or `chat_template.jinja`
    (transformers 5 reads both; a folder holding only `chat_template.json` is read here).
    """
    if tokenizer_mode not in _TOKENIZER_MODES:
        raise ValueError(f"tokenizer_mode must be one of {_TOKENIZER_MODES}, got {tokenizer_mode!r}")
    from pagoda.hf_utils import resolve_model_path
    from transformers import AutoTokenizer

    folder = resolve_model_path(path, revision=revision, field_name="tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder,
            use_fast=tokenizer_mode != "slow",
            trust_remote_code=trust_remote_code,
            local_files_only=True,
        )
    except Exception as exc:  # OSError, ValueError, KeyError from odd tokenizer_config files, ...
        raise ValueError(
            f"tokenizer={path!r}: could not load a tokenizer from {folder!r} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if getattr(tokenizer, "chat_template", None) is None:
        template = _read_template_file(folder)
        if template is not None:
            tokenizer.chat_template = template
    logger.debug("loaded tokenizer %s from %s", type(tokenizer).__name__, folder)
    return tokenizer


def _read_template_file(folder: str) -> str | None:
    """A chat template stored beside the tokenizer, in either of the files transformers writes."""
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    as_json = os.path.join(folder, "chat_template.json")
    if os.path.isfile(as_json):
        with open(as_json, encoding="utf-8") as f:
            value = json.load(f).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def load_chat_template(tokenizer: Any, path_or_inline: str | None) -> str | None:
    """The Jinja template to render with: the caller's (a file path or inline text), else the tokenizer's.

    Like vLLM's `--chat-template`: a string naming an existing file is read from it; a string with
    Jinja markers is the template itself (escape sequences such as `\\n` are decoded); anything else
    is taken for a missing file and raises ValueError. Returns None when neither side has a template.
    """
    if path_or_inline is None:
        return _tokenizer_template(tokenizer)
    if not isinstance(path_or_inline, str) or not path_or_inline:
        raise ValueError(f"chat_template must be a non-empty string (a file path or a Jinja template), "
                         f"got {path_or_inline!r}")
    expanded = os.path.expanduser(path_or_inline)
    if os.path.isfile(expanded):
        with open(expanded, encoding="utf-8") as f:
            return f.read()
    if any(marker in path_or_inline for marker in _JINJA_MARKERS):
        if "\\" not in path_or_inline:
            return path_or_inline
        # unicode_escape reads latin-1 bytes: escape everything else first so it survives the trip.
        return codecs.decode(path_or_inline.encode("latin-1", "backslashreplace"), "unicode_escape")
    raise ValueError(f"chat_template={path_or_inline!r} is neither an existing file nor a Jinja template")


def _tokenizer_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: vLLM renders the "default" one
        template = template.get("default")
    return template if isinstance(template, str) and template else None


def render_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    **kwargs: Any,
) -> str:
    """Render one conversation to prompt text. `kwargs` reach the template (e.g. `tools`, `documents`)."""
    if add_generation_prompt and continue_final_message:
        raise ValueError("add_generation_prompt and continue_final_message cannot both be true: "
                         "the first starts a new assistant turn, the second continues the last message")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"messages must be a list of dicts with 'role' and 'content', got {type(messages).__name__}")
    if continue_final_message and not messages:
        raise ValueError("continue_final_message needs at least one message to continue")
    template = load_chat_template(tokenizer, chat_template)
    if template is None:
        raise ValueError("chat_template: the tokenizer has no chat template and none was given; "
                         "pass one (a file path or a Jinja string)")
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        tokenize=False,
        **kwargs,
    )


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    **kwargs: Any,
) -> list[int]:
    """Render one conversation and return its token ids (no special tokens added beyond the template's)."""
    text = render_chat_template(tokenizer, messages, chat_template, add_generation_prompt,
                                continue_final_message, **kwargs)
    return list(tokenizer.encode(text, add_special_tokens=False))
