"""POST /v1/completions: one or many prompts (text or token ids), n choices each, optional streaming.

Choice `index` is `prompt_index * n + i`, as in vLLM. Every prompt runs as its own engine request
`{request_id}-{prompt_index}` (or its own beam search, `use_beam_search`); they run concurrently and
their choices are merged.

Invariants:
- All prompts are size-checked, tokenized (large ones on a worker thread), length-checked and
  validated before the first is sent to the engine, so a bad prompt anywhere answers 400 and leaves
  nothing running; the sequences of all prompts (len(prompts) * max(n, best_of)) are counted against
  the caps and the pending limit before anything is tokenized (limits.py).
- Streaming sends, per choice, text deltas that join to exactly the non-streamed text, then a chunk
  with its finish_reason; `stream_options.include_usage` adds one last chunk with `choices: []`
  and the usage (with `continuous_usage_stats` also every chunk carries that prompt's and choice's
  usage so far, as in vLLM); the stream always ends with `data: [DONE]`. An engine failure
  mid-stream is sent as an `{"error": ...}` event before `[DONE]`. Beam search is not streamed (vLLM).
- `return_token_ids`: full choices carry `prompt_token_ids` and `token_ids` (null otherwise, as vLLM's
  do); streamed chunks carry the new `token_ids`, and a choice's first chunk its `prompt_token_ids`.
- Leaving (client disconnect, cancellation) aborts every engine request of the call.
"""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import aclosing
from typing import Any, AsyncIterator

from fastapi import Request

from pagoda.engine.async_llm import RequestStream
from pagoda.entrypoints.openai.errors import APIError, engine_status, error_body
from pagoda.entrypoints.openai.protocol import CompletionRequest
from pagoda.entrypoints.openai.serving_beam_search import BeamSearchStream, beam_search_params, check_beam_logprobs
from pagoda.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIServing,
    ResponseStream,
    clamp_logprob,
    engine_errors,
    now,
    prompt_logprobs_json,
    sse,
)
from pagoda.outputs import RequestOutput


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, request: CompletionRequest, raw_request: Request | None) -> Any:
        self.check_generation_request(request)
        if request.suffix is not None:
            raise APIError("suffix is not supported", 400, "suffix")
        if request.use_beam_search and request.stream:
            raise APIError("stream is not supported with use_beam_search (as in vLLM): the beams are known only "
                           "at the end; allowed: stream false", 400, "stream")
        request_id = self.request_id(raw_request, request.request_id, "cmpl")
        engine_id = self.internal_id(request_id)
        sources = self._prompt_sources(request)
        sequences = self.sequences(request, len(sources))  # caps and capacity, before any tokenizing
        logprobs = self.resolve_logprobs(request.logprobs, "logprobs")
        prompt_logprobs = self.resolve_logprobs(request.prompt_logprobs, "prompt_logprobs")
        prompts = [(text, ids if text is None else await self.tokenize_prompt(
            text, request.add_special_tokens, request.truncate_prompt_tokens)) for text, ids in sources]
        # echo with max_tokens=0 returns just the prompt (and its logprobs), as vLLM does: scoring a text.
        echo_only = bool(request.echo) and request.max_tokens == 0
        jobs, parts = [], []
        for i, (text, ids) in enumerate(prompts):
            max_tokens = self.check_length(len(ids), 1 if echo_only else request.max_tokens, "max_tokens", "prompt")
            if request.use_beam_search:
                check_beam_logprobs(logprobs, request, "logprobs")
                params: Any = beam_search_params(self, request, max_tokens)
            else:
                overrides: dict[str, Any] = {"max_tokens": max_tokens, "logprobs": logprobs}
                if request.echo and logprobs is not None:
                    overrides["prompt_logprobs"] = max(logprobs, prompt_logprobs or 0)
                params = self.sampling_params(request, overrides, bool(request.stream))
            parts += [(request.n, max_tokens + (len(ids) if request.echo else 0), logprobs),
                      (request.n, len(ids), prompt_logprobs)]
            jobs.append((f"{engine_id}-{i}", text, ids, params))
        self.limits.check_response_logprobs(parts, "logprobs")
        echo_texts = [await self._prompt_text(text, ids) for text, ids in prompts] if request.echo else None
        self.limits.check_capacity(self.engine, sequences * len(jobs))  # again: the awaits above let others in
        streams = self._register(request, jobs, logprobs)  # no await from the check to here
        created = now()
        if request.stream:
            return ResponseStream(self._stream(request, request_id, created, streams, echo_only, echo_texts), streams)
        return await self._full(request, request_id, created, streams, echo_only, echo_texts)

    def _register(self, request: CompletionRequest, jobs: list[tuple], logprobs: int | None) -> list[Any]:
        """Every prompt's engine request (or beam search); if one fails, those already sent are aborted."""
        streams: list[Any] = []
        try:
            for engine_id, text, ids, params in jobs:
                if request.use_beam_search:
                    streams.append(BeamSearchStream(self, engine_id, text, ids, params, request, logprobs))
                else:
                    streams.append(self.add_request(engine_id, {"prompt": text, "prompt_token_ids": ids}, params,
                                                    request.priority))
        except BaseException:
            for stream in streams:
                stream.abort()
            raise
        return streams

    def _prompt_sources(self, request: CompletionRequest) -> list[tuple[str | None, list[int] | None]]:
        """(text, None) or (None, token ids, truncated) per prompt, before any tokenizing."""
        prompt = request.prompt
        truncate = request.truncate_prompt_tokens
        if isinstance(prompt, str):
            return [(prompt, None)]
        if not prompt:
            raise APIError("prompt must not be empty", 400, "prompt")
        if isinstance(prompt[0], int):
            return [(None, self.truncate(list(prompt), truncate))]
        if isinstance(prompt[0], str):
            return [(p, None) for p in prompt]
        return [(None, self.truncate(list(p), truncate)) for p in prompt]

    # ---- non-streaming ------------------------------------------------------------------------
    async def _full(self, request: CompletionRequest, request_id: str, created: int,
                    streams: list[Any], echo_only: bool, echo_texts: list[str] | None) -> dict:
        async def last(stream: Any) -> RequestOutput:
            final = None
            async for final in stream:
                pass
            return final

        tasks = [asyncio.ensure_future(last(s)) for s in streams]
        try:
            with engine_errors(user_errors=False):  # the engine dying meanwhile: its answer, not a 500
                finals = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            for stream in streams:
                stream.abort()
            raise
        choices, num_prompt, num_completion, num_cached = [], 0, 0, 0
        n = request.n
        for prompt_index, output in enumerate(finals):
            num_prompt += len(output.prompt_token_ids)
            num_cached += output.num_cached_tokens
            prompt_text = echo_texts[prompt_index] if echo_texts is not None else ""
            for completion in output.outputs:
                if echo_only:
                    completion = _prompt_only(completion)
                num_completion += len(completion.token_ids)
                text, token_ids, logprobs_list = completion.text, completion.token_ids, completion.logprobs
                if request.echo:
                    text = prompt_text + text
                    if logprobs_list is not None:
                        logprobs_list = list(output.prompt_logprobs or [None] * len(output.prompt_token_ids)) + list(
                            logprobs_list)
                        token_ids = list(output.prompt_token_ids) + list(token_ids)
                choices.append({
                    "index": prompt_index * n + completion.index,
                    "text": text,
                    "logprobs": self._logprobs(token_ids, logprobs_list, request) if request.logprobs is not None
                    else None,
                    "finish_reason": completion.finish_reason,
                    "stop_reason": completion.stop_reason,
                    "token_ids": list(completion.token_ids) if request.return_token_ids else None,
                    "prompt_logprobs": prompt_logprobs_json(output.prompt_logprobs)
                    if request.prompt_logprobs is not None else None,
                    "prompt_token_ids": list(output.prompt_token_ids) if request.return_token_ids else None,
                })
        choices.sort(key=lambda c: c["index"])
        return {"id": request_id, "object": "text_completion", "created": created, "model": self.model_name,
                "choices": choices, "usage": self.usage(num_prompt, num_completion, num_cached, full_response=True)}

    async def _prompt_text(self, text: str | None, ids: list[int]) -> str:
        """The prompt as echoed: its text, or its token ids decoded (off the loop when long)."""
        if text is not None:
            return text
        return await self.offload.run(len(ids), self.tokenizer.decode, ids) if self.tokenizer is not None else ""

    def _logprobs(self, token_ids: list[int], positions: list | None, request: CompletionRequest,
                  initial_offset: int = 0) -> dict:
        as_ids = self.as_token_ids(request)
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        offset = initial_offset
        for token_id, position in zip(token_ids, positions or []):
            chosen = position.get(token_id) if position else None
            token = self.token_text(token_id, chosen, as_ids)
            tokens.append(token)
            offsets.append(offset)
            offset += len(token)
            if chosen is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(clamp_logprob(chosen.logprob))
            top_logprobs.append({self.token_text(tid, lp, as_ids): clamp_logprob(lp.logprob)
                                 for tid, lp in position.items()})
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets}

    # ---- streaming ----------------------------------------------------------------------------
    async def _stream(self, request: CompletionRequest, request_id: str, created: int,
                      streams: list[RequestStream], echo_only: bool,
                      echo_texts: list[str] | None) -> AsyncIterator[bytes]:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        continuous = include_usage and bool(request.stream_options.continuous_usage_stats)
        choices: dict[int, _ChoiceState] = {}
        num_prompt: dict[int, int] = {}
        num_cached: dict[int, int] = {}
        failed = False
        try:
            async with aclosing(merge_streams(streams)) as merged:
                async for prompt_index, item in merged:
                    if isinstance(item, Exception):
                        yield sse(error_body(str(item), stream_error_status(item)))
                        failed = True
                        break
                    num_prompt[prompt_index] = len(item.prompt_token_ids)
                    num_cached[prompt_index] = item.num_cached_tokens
                    for completion in item.outputs:
                        if echo_only:
                            if completion.finish_reason is None:
                                continue
                            completion = _prompt_only(completion)
                        index = prompt_index * request.n + completion.index
                        state = choices.setdefault(index, _ChoiceState())
                        echo_text = echo_texts[prompt_index] if echo_texts is not None else ""
                        chunk = self._delta_choice(request, item, completion, index, state, echo_text)
                        if chunk is None:
                            continue
                        body = {"id": request_id, "object": "text_completion", "created": created,
                                "model": self.model_name, "choices": [chunk]}
                        if continuous:
                            body["usage"] = self.usage(num_prompt[prompt_index], state.num_tokens)
                        yield sse(body)
            if include_usage and not failed:
                usage = self.usage(sum(num_prompt.values()), sum(c.num_tokens for c in choices.values()),
                                   sum(num_cached.values()))
                yield sse({"id": request_id, "object": "text_completion", "created": created,
                           "model": self.model_name, "choices": [], "usage": usage})
            yield SSE_DONE
        finally:
            for stream in streams:
                stream.abort()

    def _delta_choice(self, request: CompletionRequest, output: RequestOutput, completion: Any, index: int,
                      state: "_ChoiceState", echo_text: str) -> dict | None:
        if state.finished:
            return None
        first = not state.started
        state.started = True
        delta_text, new_ids, positions = state.advance(completion)
        logprobs = None
        if request.logprobs is not None and positions is not None:
            ids = list(new_ids)
            if first and request.echo:
                ids = list(output.prompt_token_ids) + ids
                positions = list(output.prompt_logprobs or [None] * len(output.prompt_token_ids)) + positions
            logprobs = self._logprobs(ids, positions, request, state.text_offset)
            state.text_offset += sum(len(t) for t in logprobs["tokens"])
        if first and request.echo:
            delta_text = echo_text + delta_text
        state.finished = completion.finish_reason is not None
        if not delta_text and not state.finished and not (logprobs and logprobs["tokens"]) and not (
                request.return_token_ids and new_ids):
            return None
        chunk = {"index": index, "text": delta_text, "logprobs": logprobs,
                 "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason}
        if request.return_token_ids:
            chunk["token_ids"] = list(new_ids)
            if not state.sent_prompt_ids:
                chunk["prompt_token_ids"] = list(output.prompt_token_ids)
                state.sent_prompt_ids = True
        return chunk


def _prompt_only(completion: Any) -> Any:
    """A finished completion with its generated part removed (echo with max_tokens=0)."""
    return dataclasses.replace(completion, text="", token_ids=[], logprobs=[] if completion.logprobs is not None
                               else None, finish_reason="length", stop_reason=None)


class _ChoiceState:
    """What one streamed choice has sent so far (outputs are cumulative; chunks carry the difference)."""

    __slots__ = ("started", "finished", "sent_prompt_ids", "chars", "num_tokens", "text_offset")

    def __init__(self) -> None:
        self.started = self.finished = self.sent_prompt_ids = False
        self.chars = self.num_tokens = self.text_offset = 0

    def advance(self, completion: Any) -> tuple[str, list[int], list | None]:
        """(new text, new token ids, their logprobs or None) since the last call."""
        text = completion.text
        delta = text[self.chars:] if len(text) > self.chars else ""
        self.chars = max(self.chars, len(text))
        new_ids = completion.token_ids[self.num_tokens:]
        positions = list(completion.logprobs[self.num_tokens:]) if completion.logprobs is not None else None
        self.num_tokens = len(completion.token_ids)
        return delta, new_ids, positions


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Any]]:
    """(stream index, RequestOutput or the exception that ended it) from several streams as they come."""
    if len(streams) == 1:  # the common case: no tasks, no queue
        try:
            async for output in streams[0]:
                yield 0, output
        except Exception as exc:  # noqa: BLE001 - handed to the caller as an item
            yield 0, exc
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((index, output))
        except Exception as exc:  # noqa: BLE001
            queue.put_nowait((index, exc))
        finally:
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


def stream_error_status(exc: Exception) -> int:
    """The status an error event of a stream carries: an APIError's, an engine error's (errors.ENGINE_ERRORS),
    else 500."""
    if isinstance(exc, APIError):
        return exc.status
    status = engine_status(exc)
    return status[0] if status is not None else 500
