"""POST /v1/chat/completions: a conversation rendered through the chat template, n choices, streaming.

Invariants:
- The prompt is the rendered template tokenized with `add_special_tokens` (False by default: the
  template writes BOS itself); its length plus max_completion_tokens (or max_tokens) must fit in
  max_model_len, else 400 with both numbers. `reasoning_effort` reaches the template as a keyword
  (with `enable_thinking`, unless chat_template_kwargs sets them), as vLLM passes it.
- Rendering: the server's own template renders in this process (on a worker thread for large chats);
  a request's own `chat_template` (or `chat_template_kwargs.chat_template`) is refused with vLLM's
  400 unless the server runs with --trust-request-chat-template, and then renders in the template
  sandbox (a separate process with a time, memory and size limit, template_sandbox.py). The rendered
  text is size-checked, then tokenized off the loop when large, before anything is registered.
- Tools reach the chat template. With --enable-auto-tool-choice --tool-call-parser NAME, a request with
  `tools` and tool_choice 'auto' (their default) has each choice's generated text (its content part, when a
  reasoning parser split it) parsed by its own tool parser instance (tool_parsers/): full responses carry
  `message.tool_calls` (OpenAI tool calls) and `content` the rest (null when empty); stream deltas carry the
  parser's `tool_calls` deltas (`index`, `id`, `type`, `function.name` once, then `function.arguments`
  fragments) and its content, `finish_streaming()` output going with each choice's last delta. A choice
  with calls has finish_reason "tool_calls" (vLLM: whatever the engine's reason was); one without is unchanged
  (`tool_calls: []`, content as without a parser). Without the flags (as vLLM without
  --enable-auto-tool-choice) tools with 'auto' are a 400; 'none' runs without parsing.
- tool_choice 'required' and named functions need no flag (as vLLM): tool_choice.py checks them against the
  tools (400s naming tool_choice, before any other check, as vLLM's request validation) and gives the JSON
  schema that the request's SamplingParams carry as `structured_outputs`; a request that also constrains
  the output (response_format, guided_*, structured_outputs) or uses beam search is a 400 naming tool_choice.
  Each choice's content is read by its own forced parser (tool_choice.py) through the same paths as a tool
  parser's: `message.tool_calls` with `content` "" (vLLM), the same deltas streamed; finish_reason
  "tool_calls" for 'required' when the engine stopped on its own, the engine's reason for a named function.
- The response role is `--response-role` when a generation prompt is added, else the role of the
  last message (vLLM's rule). With `echo`, a last message of that role is repeated in front of
  the generated content.
- Streaming: per choice, a first chunk with the role, content deltas that join to exactly the
  non-streamed content, and a chunk with the finish_reason; with include_usage every chunk has
  `usage: null` and one last chunk with `choices: []` carries the usage; with continuous_usage_stats
  too, every chunk (the role chunk included: completion_tokens 0) carries the usage so far of its
  choice instead; then `data: [DONE]`. Beam search streams its final beams as one chunk per choice.
- With --reasoning-parser, each choice's text is split by its own parser instance (reasoning/): full responses
  carry `message.reasoning` and its older name `message.reasoning_content` (null when the output has no
  reasoning) and `content` the rest (null when empty; an echo goes in front of it); stream deltas carry
  `reasoning` and `reasoning_content` while in the reasoning, then `content`, joining to exactly the full
  response's fields (text a parser holds back, a marker split across deltas, comes later, at the latest with
  the finish_reason). `include_reasoning: false` drops the reasoning (vLLM), never moving it into `content`.
  Without a parser neither field appears.
- `return_token_ids` (vLLM): `prompt_token_ids` at the response level (in a stream, on the role
  chunks) and `token_ids` per choice (in a stream, the new ids of each chunk); full responses carry
  them as null when not asked, as vLLM's do. `return_prompt_text` adds the rendered `prompt_text`.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, AsyncIterator

from fastapi import Request

from pagoda.entrypoints.openai import chat_images
from pagoda.entrypoints.openai.chat_utils import ChatRenderer, message_text
from pagoda.entrypoints.openai.errors import APIError, error_body
from pagoda.entrypoints.openai.protocol import ChatCompletionRequest
from pagoda.entrypoints.openai.reasoning import ReasoningParser, ReasoningParserManager
from pagoda.entrypoints.openai.serving_beam_search import BeamSearchStream, beam_search_params, check_beam_logprobs
from pagoda.entrypoints.openai.serving_completion import merge_streams, stream_error_status
from pagoda.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIServing,
    ResponseStream,
    ServingConfig,
    clamp_logprob,
    engine_errors,
    now,
    prompt_logprobs_json,
    sse,
)
from pagoda.entrypoints.openai.template_sandbox import TemplateSandbox
from pagoda.entrypoints.openai.tool_choice import (
    conflicting_constraint,
    forced_tool_parser,
    is_forced,
    json_schema_for_tool_choice,
    tool_calls_finish_reason,
)
from pagoda.entrypoints.openai.tool_parsers import DeltaMessage, ToolParser, ToolParserManager
from pagoda.outputs import RequestOutput
from pagoda.sampling_params import StructuredOutputsParams

# vLLM's answer to a request template without --trust-request-chat-template (a 400), word for word.
UNTRUSTED_TEMPLATE = ("Chat template is passed with request, but --trust-request-chat-template is not set. "
                      "Refused request with untrusted chat template.")
_MAX_SANDBOX_OUTPUT = 32 * 1024 * 1024  # characters, when no prompt-size limit applies


class OpenAIServingChat(OpenAIServing):
    def __init__(self, engine: Any, config: ServingConfig, offload: Any = None) -> None:
        super().__init__(engine, config, offload)
        self.renderer = ChatRenderer(self.tokenizer, config.chat_template, config.chat_template_content_format)
        self._sandbox: TemplateSandbox | None = None
        self.reasoning_parser: type[ReasoningParser] | None = (
            ReasoningParserManager.get_reasoning_parser(config.reasoning_parser) if config.reasoning_parser else None)
        self.tool_parser: type[ToolParser] | None = (
            ToolParserManager.get_tool_parser(config.tool_call_parser) if config.tool_call_parser else None)

    def parses_tools(self, request: ChatCompletionRequest) -> bool:
        """True when this request's tool calls are parsed: tool_choice 'required' or a named function (forced), or
        a tool parser, tools and tool_choice 'auto' (or none)."""
        if is_forced(request.tool_choice):
            return True
        return self.tool_parser is not None and bool(request.tools) and request.tool_choice in (None, "auto")

    def new_tool_parser(self, request: ChatCompletionRequest) -> ToolParser:
        """A new tool parser instance for one choice of a request that parses_tools."""
        forced = forced_tool_parser(request.tool_choice, request.parallel_tool_calls, self.tokenizer)
        return forced if forced is not None else self.tool_parser(self.tokenizer)

    @property
    def sandbox(self) -> TemplateSandbox:
        if self._sandbox is None:
            self._sandbox = TemplateSandbox(timeout_s=self.config.chat_template_render_timeout,
                                            max_output_chars=self.limits.max_prompt_chars or _MAX_SANDBOX_OUTPUT)
        return self._sandbox

    async def render_prompt(self, request: Any) -> tuple[str, list[int]]:
        """(prompt text, token ids) of a chat request (also used by /tokenize)."""
        text, ids, _ = await self.render_chat(request)
        return text, ids

    @property
    def image_placeholder(self) -> str | None:
        """The text standing for one image in a rendered chat (None: the model takes no images)."""
        return chat_images.image_placeholder(self.engine.engine)

    @property
    def extra_fields_taken(self) -> tuple[str, ...]:
        return ("mm_processor_kwargs",) if self.image_placeholder is not None else ()

    async def render_chat(self, request: Any) -> tuple[str, list[int], Any]:
        """(prompt text, token ids, a ProcessedPrompt when the chat holds images, else None)."""
        template_kwargs = dict(request.chat_template_kwargs or {})
        effort = getattr(request, "reasoning_effort", None)
        if effort is not None:
            template_kwargs.setdefault("reasoning_effort", effort)
            template_kwargs.setdefault("enable_thinking", effort != "none")
        own_template = request.chat_template if request.chat_template is not None else template_kwargs.get(
            "chat_template")
        if own_template is not None and not self.config.trust_request_chat_template:
            raise APIError(UNTRUSTED_TEMPLATE, 400, "chat_template")
        if own_template is not None and (not isinstance(own_template, str) or not own_template):
            raise APIError("chat_template must be a non-empty string (a Jinja template)", 400, "chat_template")
        placeholder = self.image_placeholder
        media = [] if placeholder is not None else None
        job = self.renderer.prepare(
            request.messages, add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message, chat_template=own_template,
            chat_template_kwargs=template_kwargs, documents=getattr(request, "documents", None),
            tools=request.tools, media=media, image_placeholder=placeholder or "")
        if job.from_request:
            text = await self.sandbox.render(job.sandbox_job(_special_tokens(self.tokenizer)))
        else:
            text = await self.offload.run(job.size, self.renderer.render_local, job)
        if media:
            if getattr(request, "truncate_prompt_tokens", None) is not None:
                raise APIError("truncate_prompt_tokens is not supported yet with images (it could cut through an "
                               "image's tokens)", 400, "truncate_prompt_tokens")
            self.limits.check_prompt_chars(text, "messages", self.max_model_len)
            options = (request.model_extra or {}).get("mm_processor_kwargs")
            processed = await asyncio.to_thread(chat_images.process, self.engine.engine, text, media, options)
            return text, list(processed.token_ids), processed
        ids = await self.tokenize_prompt(text, bool(request.add_special_tokens),
                                         getattr(request, "truncate_prompt_tokens", None), "messages")
        return text, ids, None

    async def create_chat_completion(self, request: ChatCompletionRequest, raw_request: Request | None) -> Any:
        tool_schema = self._tool_choice_schema(request)  # first, as vLLM's request validation
        forced = None if tool_schema is None else StructuredOutputsParams(json=tool_schema)
        self.check_generation_request(request, forced)
        top_k = self._check_request(request)
        request_id = self.request_id(raw_request, request.request_id, "chatcmpl")
        engine_id = self.internal_id(request_id)
        sequences = self.sequences(request)  # caps and capacity, before rendering or tokenizing
        text, ids, with_images = await self.render_chat(request)
        if with_images is not None and request.use_beam_search:
            raise APIError("use_beam_search is not supported yet with images", 400, "use_beam_search")
        max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        if max_tokens is None:
            max_tokens = self.default_sampling.get("max_tokens")
        max_tokens = self.check_length(len(ids), max_tokens, field, "messages")
        prompt_logprobs = self.resolve_logprobs(request.prompt_logprobs, "prompt_logprobs")
        self.limits.check_response_logprobs([(request.n, max_tokens, top_k), (1, len(ids), prompt_logprobs)],
                                            "top_logprobs" if top_k is not None else "prompt_logprobs")
        role = self.config.response_role if request.add_generation_prompt else request.messages[-1].role
        echo = ""
        if request.echo and request.messages and request.messages[-1].role == role:
            echo = message_text(request.messages[-1].content)
        reply = _Reply(request_id, now(), role, echo, text, ids, top_k)
        if self.parses_tools(request):
            request = self.new_tool_parser(request).adjust_request(request)  # e.g. keep special-token markers
        if request.use_beam_search:
            check_beam_logprobs(top_k, request, "top_logprobs")
            stream: Any = BeamSearchStream(self, engine_id, text, ids, beam_search_params(self, request, max_tokens),
                                           request, top_k)
        else:
            tool_constraint = {} if forced is None else {"structured_outputs": forced}
            params = self.sampling_params(request, {"max_tokens": max_tokens, "logprobs": top_k, **tool_constraint},
                                          bool(request.stream))
            self.limits.check_capacity(self.engine, sequences)  # again: rendering and tokenizing awaited
            prompt = with_images if with_images is not None else {"prompt": text, "prompt_token_ids": ids}
            stream = self.add_request(engine_id, prompt, params, request.priority)
        # From here on every exit aborts the request: the stream's aclose(), or _full's finally.
        if request.stream:
            return ResponseStream(self._stream(request, reply, stream), [stream])
        return await self._full(request, reply, stream)

    def _check_request(self, request: ChatCompletionRequest) -> int | None:
        """The chat-only checks; the number of top logprobs per token (None: no logprobs)."""
        if request.top_logprobs and not request.logprobs:
            raise APIError("top_logprobs needs logprobs to be true", 400, "top_logprobs")
        choice = request.tool_choice
        if request.tools == []:
            raise APIError("tools must not be an empty list: give at least one tool or leave tools out (as vLLM "
                           "and OpenAI)", 400, "tools")
        if request.tools and choice in (None, "auto") and self.tool_parser is None:
            raise APIError("tool_choice 'auto' (the default when tools are given) needs tool-call parsing, which "
                           "this server does not do without --enable-auto-tool-choice --tool-call-parser NAME "
                           "(as vLLM); allowed with tools: "
                           "tool_choice 'none' (the tools still reach the chat template)", 400, "tool_choice")
        if not request.logprobs:
            return None
        return self.resolve_logprobs(request.top_logprobs or 0, "top_logprobs")

    @staticmethod
    def _tool_choice_schema(request: ChatCompletionRequest) -> dict | None:
        """The JSON schema of tool_choice 'required' or a named function (None: not forced); its 400s."""
        schema = json_schema_for_tool_choice(request.tools, request.tool_choice, request.parallel_tool_calls)
        if schema is None:
            return None
        shown = repr(request.tool_choice) if isinstance(request.tool_choice, str) else "a named function"
        other = conflicting_constraint(request)
        if other is not None:
            raise APIError(f"tool_choice {shown} constrains the output to tool calls (a JSON schema); it cannot be "
                           f"combined with {other}, another output constraint: give one of them", 400, "tool_choice")
        if request.use_beam_search:
            raise APIError(f"tool_choice {shown} needs structured output, which beam search does not apply: leave "
                           "use_beam_search false", 400, "tool_choice")
        return schema

    # ---- non-streaming ------------------------------------------------------------------------
    async def _full(self, request: ChatCompletionRequest, reply: "_Reply", stream: Any) -> dict:
        final: RequestOutput | None = None
        try:
            with engine_errors(user_errors=False):  # the engine dying meanwhile: its answer, not a 500
                async for final in stream:
                    pass
        finally:
            stream.abort()
        choices, num_completion = [], 0
        for completion in final.outputs:
            num_completion += len(completion.token_ids)
            message = self._message(request, reply, completion.text)
            choices.append({
                "index": completion.index,
                "message": message,
                "logprobs": self._logprobs(completion.token_ids, completion.logprobs, request, reply.top_k)
                if request.logprobs else None,
                "finish_reason": tool_calls_finish_reason(request.tool_choice, bool(message["tool_calls"]),
                                                          completion.finish_reason),
                "stop_reason": completion.stop_reason,
                "token_ids": list(completion.token_ids) if request.return_token_ids else None,
            })
        return {"id": reply.request_id, "object": "chat.completion", "created": reply.created,
                "model": self.model_name, "choices": choices,
                "usage": self.usage(len(final.prompt_token_ids), num_completion, final.num_cached_tokens,
                                    full_response=True),
                "prompt_logprobs": prompt_logprobs_json(final.prompt_logprobs)
                if request.prompt_logprobs is not None else None,
                "prompt_token_ids": list(final.prompt_token_ids) if request.return_token_ids else None,
                "prompt_text": reply.prompt_text if request.return_prompt_text else None}

    def _message(self, request: ChatCompletionRequest, reply: "_Reply", text: str) -> dict:
        if self.reasoning_parser is None:
            message = {"role": reply.role, "content": reply.echo + text, "tool_calls": []}
            content: str | None = text
        else:
            reasoning, content = self.reasoning_parser(self.tokenizer, reply.prompt_text).extract_reasoning(text)
            if not request.include_reasoning:
                reasoning = None
            message = {"role": reply.role, "content": (reply.echo + (content or "")) or None, "reasoning": reasoning,
                       "reasoning_content": reasoning, "tool_calls": []}
        if self.parses_tools(request):
            apply_tool_calls(message, self.new_tool_parser(request), content or "", reply.echo, request)
            if message["tool_calls"] and message["content"] is None and is_forced(request.tool_choice):
                message["content"] = ""  # vLLM's content with required / named calls
        return message

    def _logprobs(self, token_ids: list[int], positions: list | None, request: ChatCompletionRequest,
                  k: int | None) -> dict:
        as_ids = self.as_token_ids(request)
        k = k or 0
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
    async def _stream(self, request: ChatCompletionRequest, reply: "_Reply", stream: Any) -> AsyncIterator[bytes]:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        continuous = include_usage and bool(request.stream_options.continuous_usage_stats)
        num_prompt, num_cached = len(reply.prompt_ids), None
        sent: dict[int, list[int]] = {i: [0, 0] for i in range(request.n)}  # index -> [chars sent, tokens sent]
        parsers: dict[int, ReasoningParser] = {}  # index -> its reasoning parser (with the stream's state)
        tool_streams: dict[int, ToolStream] = {}  # index -> its tool parser and content so far
        parse_tools = self.parses_tools(request)
        finished: set[int] = set()

        def chunk(choices: list[dict], index: int, extras: dict | None = None) -> bytes:
            body = {"id": reply.request_id, "object": "chat.completion.chunk", "created": reply.created,
                    "model": self.model_name, "choices": choices, **(extras or {})}
            if continuous:
                body["usage"] = self.usage(num_prompt, sent[index][1])
            elif include_usage:
                body["usage"] = None
            return sse(body)

        try:
            for choices, index, extras in self._opening_chunks(request, reply):
                yield chunk(choices, index, extras)
            failed = False
            async with aclosing(merge_streams([stream])) as merged:
                async for _, output in merged:
                    if isinstance(output, Exception):
                        yield sse(error_body(str(output), stream_error_status(output)))
                        failed = True
                        break
                    num_prompt, num_cached = len(output.prompt_token_ids), output.num_cached_tokens
                    for completion in output.outputs:
                        if completion.index in finished:
                            continue
                        parser = None
                        if self.reasoning_parser is not None:
                            parser = parsers.get(completion.index)
                            if parser is None:
                                parser = parsers[completion.index] = self.reasoning_parser(self.tokenizer,
                                                                                           reply.prompt_text)
                        tools = None
                        if parse_tools:
                            tools = tool_streams.get(completion.index)
                            if tools is None:
                                tools = tool_streams[completion.index] = ToolStream(self.new_tool_parser(request),
                                                                                    request)
                        choice = self._delta(request, completion, sent.setdefault(completion.index, [0, 0]),
                                             reply.top_k, parser, tools)
                        if choice is None:
                            continue
                        if completion.finish_reason is not None:
                            finished.add(completion.index)
                        yield chunk([choice], completion.index)
            if include_usage and not failed:
                usage = self.usage(num_prompt, sum(tokens for _, tokens in sent.values()), num_cached)
                yield sse({"id": reply.request_id, "object": "chat.completion.chunk", "created": reply.created,
                           "model": self.model_name, "choices": [], "usage": usage})
            yield SSE_DONE
        finally:
            stream.abort()

    def _opening_chunks(self, request: ChatCompletionRequest, reply: "_Reply") -> list[tuple]:
        """(choices, index, response-level extras) of the role chunk (and the echo chunk) of each choice."""
        extras: dict[str, Any] = {}
        if request.return_token_ids:
            extras["prompt_token_ids"] = list(reply.prompt_ids)
        if request.return_prompt_text:
            extras["prompt_text"] = reply.prompt_text
        bodies = []
        for i in range(request.n):
            bodies.append(([{"index": i, "delta": {"role": reply.role, "content": ""}, "logprobs": None,
                             "finish_reason": None}], i, extras))
            if reply.echo:
                bodies.append(([{"index": i, "delta": {"content": reply.echo}, "logprobs": None,
                                 "finish_reason": None}], i, {}))
        return bodies

    def _delta(self, request: ChatCompletionRequest, completion: Any, sent: list[int], k: int | None,
               parser: ReasoningParser | None = None, tools: "ToolStream | None" = None) -> dict | None:
        text = completion.text
        previous = text[:sent[0]]
        delta = text[sent[0]:] if len(text) > sent[0] else ""
        sent[0] = max(sent[0], len(text))
        new_ids = completion.token_ids[sent[1]:]
        positions = completion.logprobs[sent[1]:] if completion.logprobs is not None else None
        sent[1] = len(completion.token_ids)
        finished = completion.finish_reason is not None
        wants_ids = bool((request.logprobs or request.return_token_ids) and new_ids)
        if not delta and not finished and not wants_ids:
            return None
        if parser is None:
            message = {"content": delta} if delta or not finished else {}
        else:
            message = _reasoning_delta(request, parser, previous, text, delta, finished)
        if tools is not None:
            message = tools.feed(message, finished)
        if (parser is not None or tools is not None) and not message and not finished and not wants_ids:
            return None
        finish_reason = completion.finish_reason
        if finished and tools is not None:
            finish_reason = tool_calls_finish_reason(request.tool_choice, tools.parser.tools_called_streaming,
                                                     finish_reason)
        choice = {"index": completion.index,
                  "delta": message,
                  "logprobs": self._logprobs(new_ids, positions, request, k) if request.logprobs else None,
                  "finish_reason": finish_reason, "stop_reason": completion.stop_reason}
        if request.return_token_ids:
            choice["token_ids"] = list(new_ids)
        return choice


def _reasoning_delta(request: ChatCompletionRequest, parser: ReasoningParser, previous: str, current: str,
                     delta: str, finished: bool) -> dict:
    """A stream delta split by the reasoning parser (what it holds back comes with a later one, or the last)."""
    reasoning, content = parser.extract_reasoning_streaming(previous, current, delta, final=finished)
    message: dict[str, str] = {}
    if reasoning and request.include_reasoning:
        message["reasoning"] = message["reasoning_content"] = reasoning
    if content:
        message["content"] = content
    return message


def apply_tool_calls(message: dict, parser: ToolParser, content: str, echo: str, request: Any) -> None:
    """Put the tool calls the parser finds in `content` (the generated content) into a full response message."""
    info = parser.extract_tool_calls(content, request=request)
    if not info.tools_called:
        return
    message["tool_calls"] = [call.to_dict() for call in info.tool_calls]
    message["content"] = (echo + (info.content or "")) or None


class ToolStream:
    """One streamed choice's tool parser: turns each content delta into content and `tool_calls` deltas."""

    __slots__ = ("parser", "request", "text")

    def __init__(self, parser: ToolParser, request: Any) -> None:
        self.parser, self.request, self.text = parser, request, ""

    def feed(self, message: dict, finished: bool) -> dict:
        """`message` (a chunk delta) with its `content` run through the parser; on the last one, what the
        parser still held back (finish_streaming) too."""
        message = dict(message)
        delta = message.pop("content", None) or ""
        out: list[DeltaMessage] = []
        if delta:
            previous, self.text = self.text, self.text + delta
            got = self.parser.extract_tool_calls_streaming(previous, self.text, delta, request=self.request)
            if got is not None:
                out.append(got)
        if finished:
            got = self.parser.finish_streaming()
            if got is not None:
                out.append(got)
        content = "".join(m.content or "" for m in out)
        calls = [call.to_dict() for m in out for call in m.tool_calls]
        if content:
            message["content"] = content
        if calls:
            message["tool_calls"] = calls
        return message


def _special_tokens(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's special tokens as plain strings (what apply_chat_template hands every template)."""
    tokens = {}
    for key, value in (getattr(tokenizer, "special_tokens_map", None) or {}).items():
        tokens[key] = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
    return tokens


class _Reply:
    """What every chunk or choice of one chat response shares."""

    __slots__ = ("request_id", "created", "role", "echo", "prompt_text", "prompt_ids", "top_k")

    def __init__(self, request_id: str, created: int, role: str, echo: str, prompt_text: str,
                 prompt_ids: list[int], top_k: int | None) -> None:
        self.request_id, self.created, self.role, self.echo = request_id, created, role, echo
        self.prompt_text, self.prompt_ids, self.top_k = prompt_text, prompt_ids, top_k
