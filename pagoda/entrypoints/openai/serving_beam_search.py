"""`use_beam_search` on /v1/completions and /v1/chat/completions, as vLLM's server runs it.

The request maps to BeamSearchParams as in vLLM: beam_width = n, max_tokens (or
max_completion_tokens), ignore_eos, temperature (the model's default, else 1.0, when not given),
length_penalty, include_stop_str_in_output. The search is engine/beam_search.py's
`beam_search_async` over `AsyncLLM.generate`, the same step logic `LLM.beam_search` runs.

Invariants:
- A `BeamSearchStream` stands where a RequestStream stands for the serving code: it yields one
  final RequestOutput with n CompletionOutputs, best first (index 0 is the best beam), like vLLM's
  beam search; `token_ids` of a beam ended by EOS leave the EOS out unless include_stop_str_in_output.
- Sampling fields that beam search does not use (vLLM ignores them) are refused with a 400 naming
  them when set; so is n * 2 > max_logprobs, since each step asks the engine for 2 * n logprobs.
- Cancelling the consumer (client gone) cancels the search, which aborts its step requests. The
  engine's refusals of a step (e.g. priority without --scheduling-policy priority) are answered as
  the same HTTP errors a plain request gets.
"""

from __future__ import annotations

import functools
from typing import Any

from pagoda.engine.beam_search import BeamSearchSequence, beam_search_async
from pagoda.entrypoints.openai.errors import APIError
from pagoda.entrypoints.openai.serving_engine import engine_errors
from pagoda.outputs import CompletionOutput, RequestOutput
from pagoda.sampling_params import BeamSearchParams

# Request fields beam search does not use, with the values that leave them unset.
_NOT_WITH_BEAM = {
    "best_of": (None,), "top_p": (None, 1.0), "top_k": (None, -1, 0), "min_p": (None, 0.0), "seed": (None,),
    "stop": (None, [], ""), "stop_token_ids": (None, []), "min_tokens": (0,), "presence_penalty": (None, 0.0),
    "frequency_penalty": (None, 0.0), "repetition_penalty": (None, 1.0), "logit_bias": (None, {}),
    "allowed_token_ids": (None,), "bad_words": (None, []), "spaces_between_special_tokens": (True,),
    "prompt_logprobs": (None,),
}


def beam_search_params(serving: Any, request: Any, max_tokens: int) -> BeamSearchParams:
    """BeamSearchParams of a request (vLLM's `to_beam_search_params`); 400 for fields it cannot honour."""
    for name, neutral in _NOT_WITH_BEAM.items():
        value = getattr(request, name, None)
        if not any(value == n and type(value) is type(n) for n in neutral):
            raise APIError(f"{name} is not supported with use_beam_search (beam search keeps the n best beams by "
                           f"logprob); allowed: {' or '.join('omitted' if n is None else repr(n) for n in neutral)}",
                           400, name)
    limit = serving.max_logprobs
    if limit != -1 and 2 * request.n > limit:
        raise APIError(f"n={request.n} beams need 2*n={2 * request.n} logprobs per step, more than the server's "
                       f"max_logprobs={limit} (--max-logprobs); allowed: n <= {limit // 2}", 400, "n")
    temperature = request.temperature
    if temperature is None:
        temperature = serving.default_sampling.get("temperature", 1.0)
    try:
        return BeamSearchParams(beam_width=request.n, max_tokens=max_tokens, ignore_eos=request.ignore_eos,
                                temperature=temperature, length_penalty=request.length_penalty,
                                include_stop_str_in_output=request.include_stop_str_in_output)
    except ValueError as exc:
        message = str(exc)
        param = "n" if message.startswith("beam_width") else message.split(" ", 1)[0]
        raise APIError(message.replace("beam_width", "n (the beam width)"), 400, param) from None


def check_beam_logprobs(count: int | None, request: Any, field: str) -> None:
    """Beam steps see 2 * n candidates per position: more top logprobs than that cannot be returned."""
    if count is not None and count > 2 * request.n:
        raise APIError(f"{field}={count} is more than beam search has per token (2*n={2 * request.n}); allowed: 0 to "
                       f"{2 * request.n}", 400, field)


class BeamSearchStream:
    """One prompt's beam search, iterated like a RequestStream: a single, final RequestOutput."""

    def __init__(self, serving: Any, request_id: str, prompt_text: str | None, prompt_ids: list[int],
                 params: BeamSearchParams, request: Any, top_logprobs: int | None) -> None:
        self.serving, self.request_id, self.prompt_text = serving, request_id, prompt_text
        self.prompt_ids, self.params = list(prompt_ids), params
        self.skip_special_tokens, self.priority = request.skip_special_tokens, request.priority
        self.top_logprobs = top_logprobs
        self.finished = False

    def __aiter__(self) -> "BeamSearchStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        self.finished = True
        engine = self.serving.engine
        tokenizer = self.serving.tokenizer
        decode = None if tokenizer is None else (
            lambda ids: tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens))
        generate = functools.partial(engine.generate, priority=self.priority)
        with engine_errors():  # e.g. priority without --scheduling-policy priority: a 400 from the first step
            results = await beam_search_async(generate, self.request_id, [self.prompt_ids], self.params,
                                              engine.engine.processor.stop_token_ids, self.serving.max_model_len,
                                              decode)
        outputs = [self._completion(i, beam) for i, beam in enumerate(results[0].sequences)]
        return RequestOutput(request_id=self.request_id, prompt=self.prompt_text, prompt_token_ids=self.prompt_ids,
                             prompt_logprobs=None, outputs=outputs, finished=True)

    def _completion(self, index: int, beam: BeamSearchSequence) -> CompletionOutput:
        token_ids = beam.tokens[len(self.prompt_ids):]
        positions = list(beam.logprobs)
        if beam.finish_reason == "stop" and not self.params.include_stop_str_in_output:
            token_ids, positions = token_ids[:-1], positions[:-1]
        logprobs = None
        if self.top_logprobs is not None:
            k = self.top_logprobs
            logprobs = [{tid: lp for tid, lp in position.items() if tid == chosen or (lp.rank or 0) <= k}
                        for chosen, position in zip(token_ids, positions)]
        return CompletionOutput(index=index, text=beam.text or "", token_ids=token_ids,
                                cumulative_logprob=beam.cum_logprob, logprobs=logprobs,
                                finish_reason=beam.finish_reason, stop_reason=beam.stop_reason)

    def abort(self) -> None:
        """Nothing runs outside the consumer's await: cancelling it stops the search and its requests."""
        self.finished = True
