"""Beam search on top of one-token generation, as vLLM's `LLM.beam_search` does it.

Each step asks the engine for ONE token per live beam with logprobs=2*beam_width, extends every beam
by each of those candidate tokens, and keeps the beam_width best by score. A beam's request carries
the beam's whole token list as its prompt, so beams that share a prefix share its KV blocks through
the prefix cache (hashed full blocks): a step computes only each beam's tokens past its last full
shared block. (transformers keeps 2*num_beams candidates per step for the same reason.)

Score (vLLM's `get_beam_search_score`, after transformers' BeamHypotheses):
    cumulative_logprob / len(tokens) ** length_penalty
where tokens are prompt + output, not counting a final EOS. A candidate ending in EOS (unless
ignore_eos) is finished and kept aside; the others continue. At the end, the finished and the live
beams together are sorted by score and the beam_width best returned, best first.

Invariants:
- Logprobs are the model's raw log-softmax (temperature only changes which extra sampled token
  joins the candidates), so with ignore_eos all beams of a step have the same length and the result
  equals transformers' beam search for any length_penalty.
- A beam that reaches max_model_len stops (finish_reason "length") instead of failing the call.
- Nothing here touches the engine's internals. The algorithm lives in `BeamSearchRun` (what to ask
  the engine next, what its answers do); `beam_search` drives it with a synchronous
  `generate(prompts, params)` callable (`LLM.beam_search`), `beam_search_async` with an async one
  (the server, over `AsyncLLM.generate`). Both drivers give the same beams for the same answers.
- The async driver leaves nothing running: when it fails or is cancelled, every step request still
  in flight is cancelled, which aborts it in the engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from pagoda.outputs import Logprob
from pagoda.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams


@dataclass
class BeamSearchSequence:
    """One beam: `tokens` are the prompt's and the output's; `logprobs` one dict per output token."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]]
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]


@dataclass
class BeamSearchInstance:
    prompt_tokens: list[int]
    beams: list[BeamSearchSequence] = field(default_factory=list)
    completed: list[BeamSearchSequence] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.beams:
            self.beams = [BeamSearchSequence(tokens=list(self.prompt_tokens), logprobs=[])]


def get_beam_search_score(tokens: Sequence[int], cumulative_logprob: float, eos_token_ids: set[int] | int | None,
                          length_penalty: float = 1.0) -> float:
    """vLLM's length-penalized score: cum_logprob / seq_len ** length_penalty (a final EOS not counted)."""
    if isinstance(eos_token_ids, int):
        eos_token_ids = {eos_token_ids}
    seq_len = len(tokens)
    if eos_token_ids and tokens and tokens[-1] in eos_token_ids:
        seq_len -= 1
    return cumulative_logprob / (seq_len ** length_penalty)


class BeamSearchRun:
    """One beam search over several prompts, as a state machine: `next_prompts()` says what to ask
    the engine (one one-token request per live beam, with `step_params`), `advance()` takes the
    answers in the same order, and `outputs()` gives the beam_width best sequences per prompt."""

    def __init__(self, prompt_token_ids: list[list[int]], params: BeamSearchParams, eos_token_ids: set[int],
                 max_model_len: int) -> None:
        self.params = params
        self.max_model_len = max_model_len
        self.step_params = SamplingParams(logprobs=2 * params.beam_width, max_tokens=1, temperature=params.temperature,
                                          ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
        self.ends = set() if params.ignore_eos else set(eos_token_ids)
        self.instances = [BeamSearchInstance(list(p)) for p in prompt_token_ids]
        self.steps_done = 0
        self._live: list[tuple[BeamSearchInstance, BeamSearchSequence]] = []

    def score(self, beam: BeamSearchSequence) -> float:
        return get_beam_search_score(beam.tokens, beam.cum_logprob, self.ends, self.params.length_penalty)

    def next_prompts(self) -> list[dict]:
        """TokensPrompts of the live beams for the next step; [] when the search is over."""
        self._live = []
        if self.steps_done >= self.params.max_tokens:
            return []
        for instance in self.instances:
            full = [b for b in instance.beams if len(b.tokens) >= self.max_model_len]
            for beam in full:
                beam.finish_reason = "length"
            instance.completed.extend(full)
            instance.beams = [b for b in instance.beams if len(b.tokens) < self.max_model_len]
        self._live = [(instance, beam) for instance in self.instances for beam in instance.beams]
        return [{"prompt_token_ids": beam.tokens} for _, beam in self._live]

    def advance(self, results: Sequence[Any]) -> None:
        """Extend every live beam by each candidate of its answer; keep the beam_width best per prompt."""
        if len(results) != len(self._live):
            raise ValueError(f"advance() needs one result per prompt of next_prompts() ({len(self._live)}), "
                             f"got {len(results)}")
        candidates: dict[int, list[BeamSearchSequence]] = {id(instance): [] for instance in self.instances}
        for (instance, beam), result in zip(self._live, results):
            position = result.outputs[0].logprobs[0]
            for token_id, logprob in position.items():
                new_beam = BeamSearchSequence(tokens=beam.tokens + [token_id], logprobs=beam.logprobs + [position],
                                              cum_logprob=beam.cum_logprob + logprob.logprob)
                if token_id in self.ends:
                    new_beam.finish_reason, new_beam.stop_reason = "stop", token_id
                    instance.completed.append(new_beam)
                else:
                    candidates[id(instance)].append(new_beam)
        for instance in self.instances:
            instance.beams = sorted(candidates[id(instance)], key=self.score, reverse=True)[:self.params.beam_width]
        self.steps_done += 1
        self._live = []

    def outputs(self, decode: Callable[[list[int]], str] | None = None) -> list[BeamSearchOutput]:
        """The beam_width best of the finished and live beams per prompt, best first (text when `decode`)."""
        outputs = []
        for instance in self.instances:
            for beam in instance.beams:
                beam.finish_reason = beam.finish_reason or "length"
            best = sorted(instance.completed + instance.beams, key=self.score, reverse=True)[:self.params.beam_width]
            if decode is not None:
                prompt_len = len(instance.prompt_tokens)
                for beam in best:
                    output = beam.tokens[prompt_len:]
                    if beam.finish_reason == "stop" and not self.params.include_stop_str_in_output:
                        output = output[:-1]
                    beam.text = decode(output)
            outputs.append(BeamSearchOutput(sequences=best))
        return outputs


def beam_search(
    generate: Callable[[list[Any], SamplingParams], list[Any]],
    prompt_token_ids: list[list[int]],
    params: BeamSearchParams,
    eos_token_ids: set[int],
    max_model_len: int,
    decode: Callable[[list[int]], str] | None = None,
) -> list[BeamSearchOutput]:
    """Run beam search for every prompt; `generate` takes TokensPrompts and one SamplingParams."""
    run = BeamSearchRun(prompt_token_ids, params, eos_token_ids, max_model_len)
    while prompts := run.next_prompts():
        run.advance(generate(prompts, run.step_params))
    return run.outputs(decode)


async def beam_search_async(
    generate: Callable[[Any, SamplingParams, str], AsyncIterator[Any]],
    request_id: str,
    prompt_token_ids: list[list[int]],
    params: BeamSearchParams,
    eos_token_ids: set[int],
    max_model_len: int,
    decode: Callable[[list[int]], str] | None = None,
) -> list[BeamSearchOutput]:
    """`beam_search` over an async engine: `generate(prompt, params, request_id)` is `AsyncLLM.generate`
    (RequestOutputs until the final one). Step requests are `{request_id}-{step}-{i}`, run concurrently."""
    run = BeamSearchRun(prompt_token_ids, params, eos_token_ids, max_model_len)
    while prompts := run.next_prompts():
        step = run.steps_done
        run.advance(await _gather_final([
            _final(generate(prompt, run.step_params, f"{request_id}-{step}-{i}")) for i, prompt in enumerate(prompts)]))
    return run.outputs(decode)


async def _final(outputs: AsyncIterator[Any]) -> Any:
    final = None
    async for final in outputs:
        pass
    if final is None:
        raise RuntimeError("the engine ended a beam-search step request without an output")
    return final


async def _gather_final(awaitables: list[Awaitable[Any]]) -> list[Any]:
    """Results in order; on the first failure (or cancellation) every other request is cancelled first."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
