"""POST /v1/chat/completions: a conversation rendered through the chat template, n choices, streaming.

Invariants:
- The prompt is the rendered template tokenized with `add_special_tokens` (False by default: the
  template writes BOS itself); its length plus max_completion_tokens (or max_tokens) must fit in
  max_model_len, else 400 with both numbers.
- The response role is `--response-role` when a generation prompt is added, else the role of the
  last message (vLLM's rule). With `echo`, a last message of that role is repeated in front of
  the generated content.
- Streaming: per choice, a first chunk with the role, content deltas that join to exactly the
  non-streamed content, and a chunk with the finish_reason; with include_usage every chunk has
  `usage: null` and one last chunk with `choices: []` carries the usage; then `data: [DONE]`.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any, AsyncIterator

from fastapi import Request

from pagoda.engine.async_llm import RequestStream
from pagoda.entrypoints.openai.chat_utils import ChatRenderer, message_text
from pagoda.entrypoints.openai.errors import APIError, error_body
from pagoda.entrypoints.openai.protocol import ChatCompletionRequest
from pagoda.entrypoints.openai.serving_completion import merge_streams, stream_error_status
from pagoda.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIServing,
    ServingConfig,
    clamp_logprob,
    now,
    prompt_logprobs_json,
    sse,
)
from pagoda.outputs import RequestOutput

_MAX_TOP_LOGPROBS = 20


class OpenAIServingChat(OpenAIServing):
    def __init__(self, engine: Any, config: ServingConfig) -> None:
        super().__init__(engine, config)
        self.renderer = ChatRenderer(self.tokenizer, config.chat_template, config.chat_template_content_format)

    def render_prompt(self, request: Any) -> tuple[str, list[int]]:
        """(prompt text, token ids) of a chat request (also used by /tokenize)."""
        text = self.renderer.render(
            request.messages, add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message, chat_template=request.chat_template,
            chat_template_kwargs=request.chat_template_kwargs, documents=getattr(request, "documents", None),
            tools=request.tools)
        add_special = request.add_special_tokens
        ids = self.encode(text, bool(add_special), getattr(request, "truncate_prompt_tokens", None))
        return text, ids

    async def create_chat_completion(self, request: ChatCompletionRequest, raw_request: Request | None) -> Any:
        self.check_model(request.model)
        self.check_generative()
        self._check_request(request)
        request_id = self.request_id(raw_request, request.request_id, "chatcmpl")
        text, ids = self.render_prompt(request)
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        if max_tokens is None:
            max_tokens = self.default_sampling.get("max_tokens")
        max_tokens = self.check_length(len(ids), max_tokens, field, "messages")
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = self.sampling_params(request, {"max_tokens": max_tokens, "logprobs": logprobs}, bool(request.stream))
        stream = self.add_request(request_id, {"prompt": text, "prompt_token_ids": ids}, params, request.priority)
        role = self.config.response_role if request.add_generation_prompt else request.messages[-1].role
        echo = ""
        if request.echo and request.messages and request.messages[-1].role == role:
            echo = message_text(request.messages[-1].content)
        if request.stream:
            return self._stream(request, request_id, now(), stream, role, echo)
        return await self._full(request, request_id, now(), stream, role, echo)

    def _check_request(self, request: ChatCompletionRequest) -> None:
        if request.stream_options is not None and not request.stream:
            raise APIError("stream_options can only be set when stream is true", 400, "stream_options")
        if request.top_logprobs and not request.logprobs:
            raise APIError("top_logprobs needs logprobs to be true", 400, "top_logprobs")
        if request.top_logprobs is not None and not 0 <= request.top_logprobs <= _MAX_TOP_LOGPROBS:
            raise APIError(f"top_logprobs must be in [0, {_MAX_TOP_LOGPROBS}], got {request.top_logprobs}", 400,
                           "top_logprobs")
        if request.response_format is not None and request.response_format.type != "text":
            raise APIError(f"response_format type {request.response_format.type!r} is not supported yet "
                           "(structured output); use 'text'", 400, "response_format")
        choice = request.tool_choice
        if choice is not None and choice not in ("none", "auto"):
            raise APIError("tool_choice other than 'none' or 'auto' needs tool-call parsing, which this server "
                           "does not do yet", 400, "tool_choice")

    # ---- non-streaming ------------------------------------------------------------------------
    async def _full(self, request: ChatCompletionRequest, request_id: str, created: int, stream: RequestStream,
                    role: str, echo: str) -> dict:
        final: RequestOutput | None = None
        try:
            async for final in stream:
                pass
        finally:
            stream.abort()
        choices, num_completion = [], 0
        for completion in final.outputs:
            num_completion += len(completion.token_ids)
            choices.append({
                "index": completion.index,
                "message": {"role": role, "content": echo + completion.text, "tool_calls": []},
                "logprobs": self._logprobs(completion.token_ids, completion.logprobs, request)
                if request.logprobs else None,
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason,
            })
        return {"id": request_id, "object": "chat.completion", "created": created, "model": self.model_name,
                "choices": choices,
                "usage": self.usage(len(final.prompt_token_ids), num_completion, final.num_cached_tokens),
                "prompt_logprobs": prompt_logprobs_json(final.prompt_logprobs)
                if request.prompt_logprobs is not None else None}

    def _logprobs(self, token_ids: list[int], positions: list | None, request: ChatCompletionRequest) -> dict:
        as_ids = self.as_token_ids(request)
        k = request.top_logprobs or 0
        content = []
        for token_id, position in zip(token_ids, positions or []):
            chosen = position.get(token_id) if position else None
            token = self.token_text(token_id, chosen, as_ids)
            top = []
            if position and k:
                ranked = sorted((lp.rank, tid, lp) for tid, lp in position.items() if lp.rank is not None
                                and lp.rank <= k)
                for _, tid, lp in ranked[:k]:
                    text = self.token_text(tid, lp, as_ids)
                    top.append({"token": text, "logprob": clamp_logprob(lp.logprob),
                                "bytes": list(text.encode("utf-8", errors="replace"))})
            content.append({"token": token, "logprob": clamp_logprob(chosen.logprob) if chosen else -9999.0,
                            "bytes": list(token.encode("utf-8", errors="replace")), "top_logprobs": top})
        return {"content": content}

    # ---- streaming ----------------------------------------------------------------------------
    async def _stream(self, request: ChatCompletionRequest, request_id: str, created: int, stream: RequestStream,
                      role: str, echo: str) -> AsyncIterator[bytes]:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        continuous = bool(request.stream_options and request.stream_options.continuous_usage_stats)
        sent: dict[int, list[int]] = {}  # index -> [chars sent, tokens sent]
        finished: set[int] = set()
        num_prompt = num_completion = 0

        def chunk(choices: list[dict], usage: dict | None = None) -> bytes:
            body = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                    "model": self.model_name, "choices": choices}
            if include_usage or continuous:
                body["usage"] = usage if continuous else None
            return sse(body)

        try:
            for i in range(request.n):
                sent[i] = [0, 0]
                yield chunk([{"index": i, "delta": {"role": role, "content": ""}, "logprobs": None,
                              "finish_reason": None}])
                if echo:
                    yield chunk([{"index": i, "delta": {"content": echo}, "logprobs": None, "finish_reason": None}])
            failed = False
            async with aclosing(merge_streams([stream])) as merged:
                async for _, output in merged:
                    if isinstance(output, Exception):
                        yield sse(error_body(str(output), stream_error_status(output)))
                        failed = True
                        break
                    num_prompt = len(output.prompt_token_ids)
                    num_completion = sum(len(c.token_ids) for c in output.outputs)
                    for completion in output.outputs:
                        if completion.index in finished:
                            continue
                        choice = self._delta(request, completion, sent.setdefault(completion.index, [0, 0]))
                        if choice is None:
                            continue
                        if completion.finish_reason is not None:
                            finished.add(completion.index)
                        usage = self.usage(num_prompt, num_completion) if continuous else None
                        yield chunk([choice], usage)
            if include_usage and not failed:
                body = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                        "model": self.model_name, "choices": [],
                        "usage": self.usage(num_prompt, num_completion)}
                yield sse(body)
            yield SSE_DONE
        finally:
            stream.abort()

    def _delta(self, request: ChatCompletionRequest, completion: Any, sent: list[int]) -> dict | None:
        text = completion.text
        delta = text[sent[0]:] if len(text) > sent[0] else ""
        sent[0] = max(sent[0], len(text))
        new_ids = completion.token_ids[sent[1]:]
        positions = completion.logprobs[sent[1]:] if completion.logprobs is not None else None
        sent[1] = len(completion.token_ids)
        if not delta and completion.finish_reason is None and not (request.logprobs and new_ids):
            return None
        return {"index": completion.index, "delta": {"content": delta} if delta or completion.finish_reason is None
                else {},
                "logprobs": self._logprobs(new_ids, positions, request) if request.logprobs else None,
                "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason}
