"""OutputProcessor: EngineCoreOutputs in, RequestOutputs (or PoolingRequestOutputs) out.

A user request with n > 1 (or best_of > 1) runs as several engine requests ("children", ids
`{index}_{request_id}`) that share the prompt's KV blocks through the prefix cache; this module
detokenizes them, applies stop strings and gathers them back into one RequestOutput.

Output kinds (SamplingParams.output_kind, vLLM's semantics):
- CUMULATIVE: each RequestOutput holds every child's whole output so far;
- DELTA: each RequestOutput holds only the children that changed, each with only what is new (text,
  token_ids, logprobs; prompt_logprobs come once, in the first output);
- FINAL_ONLY: one RequestOutput, when every child has finished.
While a child is unfinished and has stop strings that are cut from the output, the last
`max(len(stop)) - 1` characters of its text are held back, so streamed text never shows a stop
string's beginning that a later token completes. Hence DELTA texts always join up to the final text.

Invariants:
- Every user request has one state here until all its children have finished; then it is gone.
- A child that hits a stop string is finished here (text cut per include_stop_str_in_output) and
  its id is returned in `to_abort`, so the engine core frees it: the core never sees stop strings.
- Several new tokens in one output (speculative decoding) give exactly the output that one token per
  output would: with stop strings they are added one at a time, and the child ends at the token whose
  text completes a stop string; the later tokens are dropped (token_ids, logprobs, cumulative_logprob).
- `CompletionOutput.text` is always the detokenized text of its token_ids (minus what a stop
  string cut off, minus the held-back tail while streaming); token_ids keep every generated token,
  including EOS or stop tokens. With detokenize=False the text stays "".
- best_of > n: only the final output is made; it holds the n children with the highest cumulative
  logprob, best first, re-indexed 0..n-1.
- A child that ends in error — finish_reason "error" from the core, or an exception while processing
  its own output here (detokenizing, stop strings, logprobs) — is finished with finish_reason "error"
  and the reason in `CompletionOutput.error`, and is listed once in `failed` (a FailedRequest) for
  the engine to act on (LLMEngine frees it in the core if it still runs there; AsyncLLM fails the
  whole user request). Other requests of the same step are processed as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagoda.core.sched_output import EngineCoreOutput, PositionLogprobs
from pagoda.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagoda.engine.stop_checker import check_stop_strings
from pagoda.outputs import CompletionOutput, Logprob, PoolingOutput, PoolingRequestOutput, RequestOutput
from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class ChildState:
    index: int
    parent: "ParentState"
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None  # only when the user asked for logprobs
    cumulative_logprob: float | None = None
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None  # with finish_reason "error"
    sent_tokens: int = 0  # DELTA: what earlier outputs already carried
    sent_chars: int = 0

    def visible_text(self) -> str:
        hold = self.parent.stop_buffer_length
        if self.finish_reason is not None or hold == 0:
            return self.text
        return self.text[: max(len(self.text) - hold, 0)]

    def completion(self, delta: bool = False, index: int | None = None) -> CompletionOutput:
        text, token_ids, logprobs = self.visible_text(), self.token_ids, self.logprobs
        if delta:
            text, token_ids = text[self.sent_chars:], token_ids[self.sent_tokens:]
            if logprobs is not None:
                logprobs = logprobs[self.sent_tokens:]
            self.sent_chars += len(text)
            self.sent_tokens += len(token_ids)
        return CompletionOutput(
            index=self.index if index is None else index,
            text=text,
            token_ids=list(token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=list(logprobs) if logprobs is not None else None,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            error=self.error,
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
    stop_buffer_length: int = 0
    sent_prompt_logprobs: int = 0

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children)

    def request_output(self, changed: list[ChildState] | None = None) -> RequestOutput | None:
        """This step's RequestOutput per the output kind; None when this kind makes none now."""
        params, finished = self.params, self.finished
        kind = params.output_kind
        if params.num_sequences > params.n:
            kind = RequestOutputKind.FINAL_ONLY  # best_of: the n best are known only at the end
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        prompt_logprobs = self.prompt_logprobs
        if kind == RequestOutputKind.DELTA:
            changed = sorted(changed if changed is not None else self.children, key=lambda c: c.index)
            outputs = [c.completion(delta=True) for c in changed]
            if prompt_logprobs is not None:
                new_positions = prompt_logprobs[self.sent_prompt_logprobs:]
                self.sent_prompt_logprobs = len(prompt_logprobs)
                prompt_logprobs = new_positions or None
        elif params.num_sequences > params.n:
            ranked = sorted(self.children, key=lambda c: c.cumulative_logprob or float("-inf"), reverse=True)
            outputs = [c.completion(index=i) for i, c in enumerate(ranked[: params.n])]
        else:
            outputs = [c.completion() for c in self.children]
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=outputs,
            finished=finished,
            num_cached_tokens=self.num_cached_tokens,
        )


@dataclass
class PoolingState:
    request_id: str
    prompt_token_ids: list[int]
    params: PoolingParams


@dataclass
class FailedRequest:
    """An engine request (child) that ended in error, for the engine to act on."""

    child_id: str
    request_id: str  # the user request it belongs to
    reason: str
    running_in_core: bool  # the core still runs it (the failure happened here): abort it there
    pooling: bool = False


def child_request_id(index: int, request_id: str, num_sequences: int) -> str:
    return request_id if num_sequences == 1 else f"{index}_{request_id}"


class OutputProcessor:
    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}
        self.children: dict[str, ChildState] = {}
        self.pooling: dict[str, PoolingState] = {}
        self.failed: list[FailedRequest] = []  # children that ended in error since take_failed()
        self._token_text: dict[int, str] = {}

    def take_failed(self) -> list[FailedRequest]:
        failed, self.failed = self.failed, []
        return failed

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams | PoolingParams) -> list[str]:
        """Register a user request; returns the engine request id of each of its children."""
        if request_id in self.parents or request_id in self.pooling:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if isinstance(params, PoolingParams):
            self.pooling[request_id] = PoolingState(request_id, list(prompt_token_ids), params)
            return [request_id]
        parent = ParentState(request_id, prompt, list(prompt_token_ids), params)
        if params.stop and not params.include_stop_str_in_output:
            parent.stop_buffer_length = max(len(s) for s in params.stop) - 1
        if params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None]
        track_cumulative = params.logprobs is not None or params.num_sequences > params.n
        ids = []
        for index in range(params.num_sequences):
            detok = None
            if self.tokenizer is not None and params.detokenize:
                detok = IncrementalDetokenizer(
                    self.tokenizer, prompt_token_ids, params.skip_special_tokens, params.spaces_between_special_tokens
                )
            child = ChildState(index, parent, detok)
            if params.logprobs is not None:
                child.logprobs = []
            if track_cumulative:
                child.cumulative_logprob = 0.0
            parent.children.append(child)
            child_id = child_request_id(index, request_id, params.num_sequences)
            self.children[child_id] = child
            ids.append(child_id)
        self.parents[request_id] = parent
        return ids

    def has_unfinished(self) -> bool:
        return bool(self.parents) or bool(self.pooling)

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a user request; returns the child ids the engine core must abort."""
        if self.pooling.pop(request_id, None) is not None:
            return [request_id]
        parent = self.parents.pop(request_id, None)
        if parent is None:
            return []
        ids = [child_request_id(c.index, request_id, parent.params.num_sequences) for c in parent.children]
        for child_id in ids:
            self.children.pop(child_id, None)
        return ids

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> tuple[list, list[str]]:
        """Apply a step's outputs; returns (RequestOutputs / PoolingRequestOutputs made, ids to abort)."""
        touched: dict[str, tuple[ParentState, dict[int, ChildState]]] = {}
        results: list = []
        to_abort: list[str] = []
        for out in outputs:
            pooling = self.pooling.get(out.request_id)
            if pooling is not None:
                if out.finish_reason is not None:
                    del self.pooling[out.request_id]
                    if out.finish_reason == "error":
                        self.failed.append(FailedRequest(out.request_id, out.request_id, _reason(out), False, True))
                        continue
                    results.append(PoolingRequestOutput(out.request_id, PoolingOutput(out.pooling_output),
                                                        pooling.prompt_token_ids, finished=True))
                continue
            child = self.children.get(out.request_id)
            if child is None:
                continue  # aborted by the user meanwhile
            parent = child.parent
            try:
                if out.new_prompt_logprobs and parent.prompt_logprobs is not None and child.index == 0:
                    parent.prompt_logprobs.extend(self._logprob_dict(p, parent.params) for p in out.new_prompt_logprobs)
                parent.num_cached_tokens = out.num_cached_tokens
                stopped_by_string = self._append(child, out)
                if stopped_by_string and out.finish_reason is None:
                    to_abort.append(out.request_id)
                elif not stopped_by_string and out.finish_reason is not None:
                    child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
                    if out.finish_reason == "error":
                        child.error = _reason(out)
                        self.failed.append(FailedRequest(out.request_id, parent.request_id, child.error, False))
            except Exception as exc:  # noqa: BLE001 - one request's post-processing fails that request only
                child.finish_reason, child.stop_reason = "error", None
                child.error = f"processing the output of request {out.request_id} failed: {type(exc).__name__}: {exc}"
                self.failed.append(FailedRequest(out.request_id, parent.request_id, child.error, not out.finished))
            if child.finish_reason is not None:
                del self.children[out.request_id]
            touched.setdefault(parent.request_id, (parent, {}))[1][child.index] = child
        for parent, changed in touched.values():
            output = parent.request_output(list(changed.values()))
            if output is not None:
                results.append(output)
            if parent.finished:
                del self.parents[parent.request_id]
        return results, to_abort

    def _append(self, child: ChildState, out: EngineCoreOutput) -> bool:
        """Add new tokens to a child; True when a stop string finished it."""
        new_ids = out.new_token_ids
        if len(new_ids) > 1 and child.parent.params.stop and child.detokenizer is not None:
            # Several tokens at once (speculative decoding): one at a time, so that a stop string ends the
            # output at the token whose text completes it, exactly as one token per step would; the
            # tokens after it are dropped (from token_ids, logprobs and cumulative_logprob too).
            positions, last = out.new_logprobs, len(new_ids) - 1
            for i in range(len(new_ids)):
                if self._add(child, new_ids[i:i + 1], positions[i:i + 1] if positions is not None else None,
                             out.finish_reason if i == last else None):
                    return True
            return False
        return self._add(child, new_ids, out.new_logprobs, out.finish_reason)

    def _add(self, child: ChildState, new_ids: list[int], positions: list[PositionLogprobs] | None,
             finish_reason: str | None) -> bool:
        """Add tokens that end with the core's `finish_reason` (None: not the output's last); True on a stop string."""
        params = child.parent.params
        child.token_ids.extend(new_ids)
        if positions is not None:
            for position in positions:
                if child.logprobs is not None:
                    child.logprobs.append(self._logprob_dict(position, params))
                if child.cumulative_logprob is not None:
                    child.cumulative_logprob += position[1][0]
        if child.detokenizer is None:
            return False
        text_ids = new_ids
        if finish_reason == "stop" and not params.include_stop_str_in_output:
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

    def _logprob_dict(self, position: PositionLogprobs, params: SamplingParams) -> dict[int, Logprob]:
        ids, logprobs, rank = position
        decode = params.detokenize
        result = {ids[0]: Logprob(logprobs[0], rank, self._decode(ids[0]) if decode else None)}
        for j in range(1, len(ids)):
            if ids[j] not in result:
                result[ids[j]] = Logprob(logprobs[j], j, self._decode(ids[j]) if decode else None)
        return result

    def _decode(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = decode_token(self.tokenizer, token_id)
        return text


def _reason(out: EngineCoreOutput) -> str:
    return out.error or f"request {out.request_id} failed in the engine core"
