"""Chat messages → prompt text and token ids, through the chat template.

`--chat-template-content-format` decides what a template sees as a message's `content`:
"string" (parts joined by newlines) or "openai" (a list of `{"type": "text", "text": ...}` parts);
"auto" picks "openai" when the template loops over a message's content, else "string" (vLLM's rule).

Invariants:
- Only text parts are accepted, and image parts for a model that takes images; any other part type is a
  400 naming `messages[i].content[j].type`.
- Messages reach the template as plain dicts with every field the client sent (name, tool_calls,
  tool_call_id, ...), `content` normalized per the content format.
- A template that fails to render (a Jinja error or `raise_exception(...)` in the template) is a 400
  carrying the template's message, never a 500.
- `prepare()` does every check and builds the job without rendering; `render_local()` renders a job
  with the server's own (trusted) template in this process. A request's own template is never
  rendered here: serving_chat.py sends its job to the template sandbox (template_sandbox.py), or
  refuses it without --trust-request-chat-template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pagoda.entrypoints.openai.errors import APIError
from pagoda.tokenizer import load_chat_template

CONTENT_FORMATS = ("auto", "string", "openai")
_LOOPS_OVER_CONTENT = re.compile(
    r"\{%-?\s*for\s+\w+\s+in\s+\w+(\s*\[\s*['\"]content['\"]\s*\]|\.content\b)")
_TEXT_PART_TYPES = ("text", "input_text")
_IMAGE_PART_TYPES = ("image_url", "image_pil", "input_image")


def _image_value(part: dict, kind: str, where: str) -> Any:
    """An image part's image: a URL string (image_url as a string or {"url": ...}; input_image's image_url) or,
    offline, a PIL image (image_pil). `detail` is accepted and ignored, as vLLM documents."""
    value = part.get("image_pil") if kind == "image_pil" else part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if value is None:
        raise APIError(f"{where}: an {kind} part needs its {'image_pil' if kind == 'image_pil' else 'image_url'}", 400,
                       where)
    return value


def detect_content_format(template: str | None) -> str:
    if template and _LOOPS_OVER_CONTENT.search(template):
        return "openai"
    return "string"


def resolve_content_format(configured: str, template: str | None) -> str:
    return detect_content_format(template) if configured == "auto" else configured


def message_text(content: Any) -> str:
    """A message's content as one string (parts joined by newlines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content)


def normalize_messages(messages: list[Any], content_format: str, media: list | None = None,
                       image_placeholder: str = "<image>") -> list[dict[str, Any]]:
    """Plain dicts for the template; 400 for a content part that is not text. With `media` (a list, for a model
    that takes images) image parts are accepted: each is appended to `media` as (its image_url / image_pil
    value, where it is) and stands in the content as {"type": "image"} ("openai" format) or as
    `image_placeholder` before the message's text ("string" format, one line per image, as vLLM)."""
    result = []
    for i, message in enumerate(messages):
        data = message.model_dump(exclude_none=True) if hasattr(message, "model_dump") else dict(message)
        content = data.get("content")
        if isinstance(content, list):
            parts, num_images = [], 0
            for j, part in enumerate(content):
                kind = part.get("type")
                if media is not None and kind in _IMAGE_PART_TYPES:
                    media.append((_image_value(part, kind, f"messages[{i}].content[{j}]"), f"messages[{i}].content[{j}]"))
                    parts.append({"type": "image"})
                    num_images += 1
                    continue
                if kind not in _TEXT_PART_TYPES or not isinstance(part.get("text"), str):
                    takes = "text and image parts" if media is not None else "text parts only"
                    raise APIError(
                        f"messages[{i}].content[{j}].type {kind!r} is not supported: this model takes {takes} "
                        "({\"type\": \"text\", \"text\": ...})", 400, f"messages[{i}].content")
                parts.append({"type": "text", "text": part["text"]})
            if content_format == "openai":
                data["content"] = parts
            else:
                text = message_text([p for p in parts if p["type"] == "text"])
                data["content"] = "\n".join([image_placeholder] * num_images + ([text] if text or not num_images else []))
        elif content is None:
            data["content"] = [] if content_format == "openai" else ""
        elif content_format == "openai":
            data["content"] = [{"type": "text", "text": content}]
        result.append(data)
    return result


@dataclass
class RenderJob:
    """One conversation ready to render: what `apply_chat_template` (or the sandbox worker) is given."""

    template: str
    messages: list[dict[str, Any]]
    add_generation_prompt: bool
    continue_final_message: bool
    kwargs: dict[str, Any]  # tools, documents and the request's chat_template_kwargs
    from_request: bool  # the request's own template (untrusted), not the server's
    size: int  # characters of message text: how much work rendering is

    def sandbox_job(self, special_tokens: dict[str, Any]) -> dict[str, Any]:
        """The job as template_worker.py takes it (the tokenizer's special tokens first, as transformers)."""
        kwargs = dict(self.kwargs)
        tools, documents = kwargs.pop("tools", None), kwargs.pop("documents", None)
        return {"template": self.template, "messages": self.messages, "tools": tools, "documents": documents,
                "add_generation_prompt": self.add_generation_prompt,
                "continue_final_message": self.continue_final_message, "kwargs": {**special_tokens, **kwargs}}


class ChatRenderer:
    """Renders conversations with the server's template (or prepares a request's own for the sandbox)."""

    def __init__(self, tokenizer: Any, chat_template: str | None, content_format: str) -> None:
        self.tokenizer = tokenizer
        self.template = load_chat_template(tokenizer, chat_template) if tokenizer is not None else None
        self.content_format = content_format

    def prepare(self, messages: list[Any], *, add_generation_prompt: bool, continue_final_message: bool,
                chat_template: str | None = None, chat_template_kwargs: dict | None = None,
                documents: list | None = None, tools: list | None = None, media: list | None = None,
                image_placeholder: str = "<image>") -> RenderJob:
        """The render job of one conversation; with `media` (a model that takes images) image parts are accepted
        and collected there (see normalize_messages)."""
        if self.tokenizer is None:
            raise APIError("chat needs a tokenizer, but the server runs with --skip-tokenizer-init", 400)
        if add_generation_prompt and continue_final_message:
            raise APIError("add_generation_prompt and continue_final_message cannot both be true: the first starts "
                           "a new assistant turn, the second continues the last message", 400,
                           "continue_final_message")
        if not messages:
            raise APIError("messages must hold at least one message", 400, "messages")
        template = chat_template or self.template
        if template is None:
            raise APIError("the model has no chat template; start the server with --chat-template or pass "
                           "chat_template in the request", 400, "chat_template")
        content_format = resolve_content_format(self.content_format, template)
        conversation = normalize_messages(messages, content_format, media, image_placeholder)
        kwargs = dict(chat_template_kwargs or {})
        for key in ("add_generation_prompt", "continue_final_message", "chat_template", "tokenize"):
            kwargs.pop(key, None)  # set by the request's own fields
        if documents is not None:
            kwargs["documents"] = documents
        if tools is not None:
            kwargs["tools"] = tools
        size = sum(len(message_text(m.get("content"))) for m in conversation)
        return RenderJob(template, conversation, add_generation_prompt, continue_final_message, kwargs,
                         from_request=bool(chat_template), size=size)

    def render_local(self, job: RenderJob) -> str:
        """Render in this process: for the server's own template only (a request's goes to the sandbox)."""
        try:
            # The template is already text (loaded once at start-up), so it goes to transformers as is:
            # loading it again would re-read escape sequences.
            return self.tokenizer.apply_chat_template(job.messages, chat_template=job.template, tokenize=False,
                                                      add_generation_prompt=job.add_generation_prompt,
                                                      continue_final_message=job.continue_final_message,
                                                      **job.kwargs)
        except APIError:
            raise
        except ValueError as exc:
            raise APIError(str(exc), 400, "messages") from None
        except Exception as exc:  # jinja2 errors, template raise_exception(), ...
            raise APIError(f"the chat template failed to render: {type(exc).__name__}: {exc}", 400,
                           "messages") from None
