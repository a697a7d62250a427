"""OutputProcessor: EngineCoreOutputs in, RequestOutputs out — detokenizing and stop strings.

A user request with n > 1 runs as n engine requests ("children", ids `{index}_{request_id}`) that
share the prompt's KV blocks through the prefix cache; this module gathers them back into one
RequestOutput with n CompletionOutputs.

Invariants:
- Every user request has one ParentState until all its children have finished; then it is gone.
- A child that hits a stop string is finished here (text cut per include_stop_str_in_output) and
  its id is returned in `to_abort`, so the engine core frees it: the core never sees stop strings.
- `CompletionOutput.text` is always the detokenized text of its token_ids (minus what a stop
  string cut off); token_ids keep every generated token, including EOS or stop tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagoda.core.sched_output import EngineCoreOutput, PositionLogprobs
from pagoda.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagoda.engine.stop_checker import check_stop_strings
from pagoda.outputs import CompletionOutput, Logprob, RequestOutput
from pagoda.sampling_params import SamplingParams


@dataclass
class ChildState:
    index: int
    parent: "ParentState"
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def completion(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.index,
            text=self.text,
            token_ids=list(self.token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


@dataclass
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[ChildState] = field(default_factory=list)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children)

    def request_output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self.prompt_logprobs,
            outputs=[c.completion() for c in self.children],
            finished=self.finished,
            num_cached_tokens=self.num_cached_tokens,
        )


def child_request_id(index: int, request_id: str, n: int) -> str:
    return request_id if n == 1 else f"{index}_{request_id}"


class OutputProcessor:
    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}
        self.children: dict[str, ChildState] = {}
        self._token_text: dict[int, str] = {}

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams) -> list[str]:
        """Register a user request; returns the engine request id of each of its n children."""
        if request_id in self.parents:
            raise ValueError(f"request_id {request_id!r} is already in use")
        parent = ParentState(request_id, prompt, list(prompt_token_ids), params)
        if params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None]
        ids = []
        for index in range(params.n):
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(
                    self.tokenizer, prompt_token_ids, params.skip_special_tokens, params.spaces_between_special_tokens
                )
            child = ChildState(index, parent, detok)
            if params.logprobs is not None:
                child.logprobs, child.cumulative_logprob = [], 0.0
            parent.children.append(child)
            child_id = child_request_id(index, request_id, params.n)
            self.children[child_id] = child
            ids.append(child_id)
        self.parents[request_id] = parent
        return ids

    def has_unfinished(self) -> bool:
        return bool(self.parents)

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a user request; returns the child ids the engine core must abort."""
        parent = self.parents.pop(request_id, None)
        if parent is None:
            return []
        ids = [child_request_id(c.index, request_id, parent.params.n) for c in parent.children]
        for child_id in ids:
            self.children.pop(child_id, None)
        return ids

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Apply a step's outputs; returns (outputs of the user requests they touched, ids to abort)."""
        touched: dict[str, ParentState] = {}
        to_abort: list[str] = []
        for out in outputs:
            child = self.children.get(out.request_id)
            if child is None:
                continue  # aborted by the user meanwhile
            parent = child.parent
            if out.new_prompt_logprobs and parent.prompt_logprobs is not None and child.index == 0:
                parent.prompt_logprobs.extend(self._logprob_dicts(out.new_prompt_logprobs))
            parent.num_cached_tokens = out.num_cached_tokens
            stopped_by_string = self._append(child, out)
            if stopped_by_string and out.finish_reason is None:
                to_abort.append(out.request_id)
            elif not stopped_by_string and out.finish_reason is not None:
                child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            if child.finish_reason is not None:
                del self.children[out.request_id]
            touched[parent.request_id] = parent
        results = []
        for parent in touched.values():
            results.append(parent.request_output())
            if parent.finished:
                del self.parents[parent.request_id]
        return results, to_abort

    def _append(self, child: ChildState, out: EngineCoreOutput) -> bool:
        """Add new tokens to a child; True when a stop string finished it."""
        params = child.parent.params
        child.token_ids.extend(out.new_token_ids)
        if out.new_logprobs is not None and child.logprobs is not None:
            for position in out.new_logprobs:
                child.logprobs.append(self._logprob_dict(position))
                child.cumulative_logprob += position[1][0]
        if child.detokenizer is None:
            return False
        text_ids = out.new_token_ids
        if out.finish_reason == "stop" and not params.include_stop_str_in_output:
            text_ids = text_ids[:-1]  # EOS / a stop token ends the text without appearing in it (vLLM)
        before = len(child.detokenizer.output_text)
        child.detokenizer.add_tokens(text_ids)
        text = child.detokenizer.output_text
        child.text = text
        if not params.stop:
            return False
        match = check_stop_strings(text, len(text) - before, params.stop, params.include_stop_str_in_output)
        if match is None:
            return False
        stop_str, truncate_to = match
        child.text = text[:truncate_to]
        child.finish_reason, child.stop_reason = "stop", stop_str
        return True

    def _logprob_dicts(self, positions: list[PositionLogprobs]) -> list[dict[int, Logprob]]:
        return [self._logprob_dict(p) for p in positions]

    def _logprob_dict(self, position: PositionLogprobs) -> dict[int, Logprob]:
        ids, logprobs, rank = position
        result = {ids[0]: Logprob(logprobs[0], rank, self._decode(ids[0]))}
        for j in range(1, len(ids)):
            if ids[j] not in result:
                result[ids[j]] = Logprob(logprobs[j], j, self._decode(ids[j]))
        return result

    def _decode(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = decode_token(self.tokenizer, token_id)
        return text
