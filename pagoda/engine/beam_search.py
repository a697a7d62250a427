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
- Nothing here touches the engine's internals: it only needs a `generate(prompts, params)` callable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

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


def beam_search(
    generate: Callable[[list[Any], SamplingParams], list[Any]],
    prompt_token_ids: list[list[int]],
    params: BeamSearchParams,
    eos_token_ids: set[int],
    max_model_len: int,
    decode: Callable[[list[int]], str] | None = None,
) -> list[BeamSearchOutput]:
    """Run beam search for every prompt; `generate` takes TokensPrompts and one SamplingParams."""
    width = params.beam_width
    step_params = SamplingParams(logprobs=2 * width, max_tokens=1, temperature=params.temperature,
                                 ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
    ends = set() if params.ignore_eos else set(eos_token_ids)

    def score(beam: BeamSearchSequence) -> float:
        return get_beam_search_score(beam.tokens, beam.cum_logprob, ends, params.length_penalty)

    instances = [BeamSearchInstance(list(p)) for p in prompt_token_ids]
    for _ in range(params.max_tokens):
        for instance in instances:
            full = [b for b in instance.beams if len(b.tokens) >= max_model_len]
            for beam in full:
                beam.finish_reason = "length"
            instance.completed.extend(full)
            instance.beams = [b for b in instance.beams if len(b.tokens) < max_model_len]
        live = [(instance, beam) for instance in instances for beam in instance.beams]
        if not live:
            break
        results = generate([{"prompt_token_ids": beam.tokens} for _, beam in live], step_params)
        candidates: dict[int, list[BeamSearchSequence]] = {id(instance): [] for instance in instances}
        for (instance, beam), result in zip(live, results):
            position = result.outputs[0].logprobs[0]
            for token_id, logprob in position.items():
                new_beam = BeamSearchSequence(tokens=beam.tokens + [token_id], logprobs=beam.logprobs + [position],
                                              cum_logprob=beam.cum_logprob + logprob.logprob)
                if token_id in ends:
                    new_beam.finish_reason, new_beam.stop_reason = "stop", token_id
                    instance.completed.append(new_beam)
                else:
                    candidates[id(instance)].append(new_beam)
        for instance in instances:
            instance.beams = sorted(candidates[id(instance)], key=score, reverse=True)[:width]

    outputs = []
    for instance in instances:
        for beam in instance.beams:
            beam.finish_reason = beam.finish_reason or "length"
        best = sorted(instance.completed + instance.beams, key=score, reverse=True)[:width]
        if decode is not None:
            prompt_len = len(instance.prompt_tokens)
            for beam in best:
                output = beam.tokens[prompt_len:]
                if beam.finish_reason == "stop" and not params.include_stop_str_in_output:
                    output = output[:-1]
                beam.text = decode(output)
        outputs.append(BeamSearchOutput(sequences=best))
    return outputs
