"""SamplingParams and BeamSearchParams: how a request's tokens are chosen and when it stops
(vLLM's names, defaults and semantics).

Invariants:
- A constructed SamplingParams is valid on its own: every check raises ValueError naming the field
  and the allowed values, never AssertionError. Checks that need the model (token ids inside the
  vocabulary, bad words that tokenize) are the Processor's, before the engine sees the request.
- `temperature < 1e-5` means greedy: top_p, top_k and min_p are then reset to their neutral values,
  so the sampler can treat `sampling_type == GREEDY` as "argmax" without looking further. Penalties,
  logit_bias, allowed_token_ids, bad_words, min_tokens and logits_processors apply to greedy rows too.
- `stop`, `stop_token_ids` and `bad_words` are lists after construction; `logit_bias` is a dict of
  int ids to floats clamped to [-100, 100] (OpenAI's range); `allowed_token_ids` is None or non-empty.
- `best_of` (None means n) >= n: best_of sequences are sampled and the n with the highest
  cumulative logprob are returned. With best_of > n only the final output is produced, so
  output_kind DELTA is refused there (as vLLM does).
- `clone()` deep-copies everything except the logits processors, which are shared (or cloned with
  their own `clone()` when they have one), as vLLM does.
- `structured_outputs` (vLLM's current name) and `guided_decoding` (its older one) are one field:
  after construction `guided_decoding` is None and `structured_outputs` holds the constraint, a
  StructuredOutputsParams with exactly one kind of constraint (json, regex, choice, grammar,
  json_object or structural_tag). Whether a backend can compile it is the engine's check.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field, fields
from enum import Enum, IntEnum
from typing import Any, Callable

_GREEDY_EPS = 1e-5
_MAX_ABS_LOGIT_BIAS = 100.0

# `(output_ids, logits) -> logits` or `(prompt_ids, output_ids, logits) -> logits` (vLLM V0's
# per-request logits processors): `logits` is the row's float32 [vocab] tensor after the raw logprobs
# were taken; ids are lists of ints.
LogitsProcessor = Callable[..., Any]


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


class RequestOutputKind(Enum):
    # Every RequestOutput holds the whole output so far.
    CUMULATIVE = 0
    # Every RequestOutput holds only what is new since the previous one.
    DELTA = 1
    # Only the final RequestOutput is produced.
    FINAL_ONLY = 2


STRUCTURED_OUTPUT_BACKENDS = ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer")
STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass
class StructuredOutputsParams:
    """One request's output constraint (vLLM's StructuredOutputsParams; GuidedDecodingParams is the same).

    Exactly one of the constraint fields is set: `json` (a JSON schema, as a dict or its JSON text),
    `regex`, `choice` (the output is exactly one of the strings), `grammar` (EBNF / Lark text),
    `json_object=True` (any JSON object) or `structural_tag` (xgrammar's structural tag, JSON text).
    The rest tune how it is compiled; `backend` picks a backend for this request (None: the engine's).
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.json_object is False:
            self.json_object = None
        given = [name for name in STRUCTURED_OUTPUT_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"structured_outputs must set exactly one of {list(STRUCTURED_OUTPUT_KINDS)}, "
                             f"got {given or 'none'}")
        _check(self.json is None or isinstance(self.json, (str, dict)), "structured_outputs.json", self.json,
               "a JSON schema (a dict or its JSON text)")
        for name in ("regex", "grammar", "structural_tag", "whitespace_pattern"):
            value = getattr(self, name)
            _check(value is None or isinstance(value, str), f"structured_outputs.{name}", value, "a string")
        if self.choice is not None:
            if isinstance(self.choice, tuple):
                self.choice = list(self.choice)
            _check(isinstance(self.choice, list) and bool(self.choice) and all(isinstance(c, str) for c in self.choice),
                   "structured_outputs.choice", self.choice, "a non-empty list of strings")
        _check(self.json_object in (None, True), "structured_outputs.json_object", self.json_object, "true or absent")
        _check(self.backend is None or self.backend in STRUCTURED_OUTPUT_BACKENDS, "structured_outputs.backend",
               self.backend, f"one of {list(STRUCTURED_OUTPUT_BACKENDS)}")

    @property
    def kind(self) -> str:
        """Which constraint this is: one of STRUCTURED_OUTPUT_KINDS."""
        return next(name for name in STRUCTURED_OUTPUT_KINDS if getattr(self, name) is not None)

    @classmethod
    def from_optional(cls, **kwargs: Any) -> "StructuredOutputsParams | None":
        """The params from possibly-None keyword arguments; None when no constraint is given."""
        if all(kwargs.get(name) in (None, False) for name in STRUCTURED_OUTPUT_KINDS):
            return None
        return cls(**{k: v for k, v in kwargs.items() if v is not None})


GuidedDecodingParams = StructuredOutputsParams  # vLLM's name before 0.11


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: int | None = None
    detokenize: bool = True
    logits_processors: list[LogitsProcessor] | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputsParams | None = None
    guided_decoding: StructuredOutputsParams | None = None  # vLLM's older name of structured_outputs
    # Filled by the engine, not by users: every id that ends generation (EOS and generation_config's),
    # and the token sequences of `bad_words` (each word with and without a leading space).
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._merge_structured_outputs()
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        self.bad_words = list(self.bad_words or [])
        if self.logits_processors is not None:
            self.logits_processors = list(self.logits_processors)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
        self._normalize_logit_bias()
        self._verify()
        if self.temperature < _GREEDY_EPS:
            self.top_p, self.top_k, self.min_p = 1.0, -1, 0.0
        self.all_stop_token_ids = set(self.stop_token_ids)

    @classmethod
    def from_optional(cls, **kwargs: Any) -> "SamplingParams":
        """SamplingParams from keywords where None means "the default" (vLLM's helper)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown SamplingParams field(s): {unknown}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def _normalize_logit_bias(self) -> None:
        if self.logit_bias is None:
            return
        if not isinstance(self.logit_bias, dict):
            raise ValueError(f"logit_bias must be a dict of token id to bias, got {type(self.logit_bias).__name__}")
        normalized = {}
        for token, bias in self.logit_bias.items():
            try:
                token_id = int(token)
                value = float(bias)
            except (TypeError, ValueError):
                raise ValueError(f"logit_bias must map token ids to numbers, got {token!r}: {bias!r}") from None
            _check(not math.isnan(value), "logit_bias", self.logit_bias, "a dict of token id to a number (not NaN)")
            normalized[token_id] = min(_MAX_ABS_LOGIT_BIAS, max(-_MAX_ABS_LOGIT_BIAS, value))
        self.logit_bias = normalized

    def _merge_structured_outputs(self) -> None:
        if self.guided_decoding is not None:
            if self.structured_outputs is not None:
                raise ValueError("give structured_outputs or guided_decoding (its older name), not both")
            self.structured_outputs, self.guided_decoding = self.guided_decoding, None
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        _check(self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputsParams),
               "structured_outputs", self.structured_outputs, "a StructuredOutputsParams or None")

    def _verify(self) -> None:
        _check(_is_int(self.n) and self.n >= 1, "n", self.n, "an integer >= 1")
        if self.best_of is not None:
            _check(_is_int(self.best_of) and self.best_of >= self.n, "best_of", self.best_of,
                   f"an integer >= n (n={self.n})")
            _check(self.best_of == self.n or self.output_kind != RequestOutputKind.DELTA, "best_of",
                   self.best_of, f"equal to n ({self.n}) when output_kind is DELTA")
        _check(self.temperature >= 0.0, "temperature", self.temperature, ">= 0")
        _check(0.0 < self.top_p <= 1.0, "top_p", self.top_p, "in (0, 1]")
        _check(_is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1), "top_k", self.top_k,
               "-1 (disabled) or an integer >= 1")
        _check(0.0 <= self.min_p <= 1.0, "min_p", self.min_p, "in [0, 1]")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", self.presence_penalty, "in [-2, 2]")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", self.frequency_penalty, "in [-2, 2]")
        _check(self.repetition_penalty > 0.0 and math.isfinite(self.repetition_penalty), "repetition_penalty",
               self.repetition_penalty, "a finite number > 0 (1.0 disables it)")
        _check(self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
               "max_tokens", self.max_tokens, "None or an integer >= 1")
        _check(_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", self.min_tokens, ">= 0")
        if self.max_tokens is not None:
            _check(self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens,
                   f"<= max_tokens ({self.max_tokens})")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value >= -1), name, value,
                   "None, -1 (the whole vocabulary) or an integer >= 0")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "non-empty strings")
        _check(all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
               self.stop_token_ids, "non-negative token ids")
        _check(all(isinstance(w, str) and w.strip() for w in self.bad_words), "bad_words", self.bad_words,
               "a list of non-blank strings")
        if self.allowed_token_ids is not None:
            _check(len(self.allowed_token_ids) > 0 and all(_is_int(t) for t in self.allowed_token_ids),
                   "allowed_token_ids", self.allowed_token_ids, "None or a non-empty list of token ids")
        if self.truncate_prompt_tokens is not None:
            _check(_is_int(self.truncate_prompt_tokens) and (self.truncate_prompt_tokens == -1
                                                            or self.truncate_prompt_tokens >= 1),
                   "truncate_prompt_tokens", self.truncate_prompt_tokens,
                   "None, -1 (the model's max_model_len) or an integer >= 1")
        _check(isinstance(self.output_kind, RequestOutputKind), "output_kind", self.output_kind,
               "a RequestOutputKind (CUMULATIVE, DELTA or FINAL_ONLY)")
        _check(self.detokenize or not self.stop, "stop", self.stop,
               "empty when detokenize=False (stop strings need the text)")
        if self.logits_processors is not None:
            _check(all(callable(p) for p in self.logits_processors), "logits_processors",
                   self.logits_processors, "a list of callables (output_ids, logits) or (prompt_ids, output_ids, logits)")
            for processor in self.logits_processors:
                logits_processor_arity(processor)
        if self.seed is not None:
            _check(_is_int(self.seed), "seed", self.seed, "an integer or None")

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _GREEDY_EPS:
            return SamplingType.GREEDY
        return SamplingType.RANDOM if self.seed is None else SamplingType.RANDOM_SEED

    @property
    def num_sequences(self) -> int:
        """How many sequences are sampled: best_of when given, else n."""
        return self.best_of if self.best_of is not None else self.n

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def clone(self) -> "SamplingParams":
        memo = {}
        for processor in self.logits_processors or ():
            memo[id(processor)] = processor.clone() if hasattr(processor, "clone") else processor
        return copy.deepcopy(self, memo=memo)


def logits_processor_arity(processor: LogitsProcessor) -> int:
    """2 for `(output_ids, logits)`, 3 for `(prompt_ids, output_ids, logits)`; ValueError otherwise."""
    try:
        parameters = inspect.signature(processor).parameters.values()
    except (TypeError, ValueError):
        return 2  # builtins and C callables: assume the common two-argument form
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return 3
    required = [p for p in positional if p.default is p.empty]
    if len(positional) >= 3 and len(required) <= 3:
        return 3
    if len(required) <= 2 <= len(positional):
        return 2
    raise ValueError(
        f"logits_processors entries must take (output_ids, logits) or (prompt_ids, output_ids, logits); "
        f"{processor!r} takes {len(positional)} positional argument(s)"
    )


@dataclass
class BeamSearchParams:
    """Beam search (vLLM's `LLM.beam_search`): keep the beam_width best sequences at every step.

    A sequence's score is `cumulative_logprob / len(tokens) ** length_penalty`, where `tokens` is the
    prompt plus the output, not counting a final EOS (vLLM's `get_beam_search_score`).
    """

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        _check(_is_int(self.beam_width) and self.beam_width >= 1, "beam_width", self.beam_width, "an integer >= 1")
        _check(_is_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens", self.max_tokens, "an integer >= 1")
        _check(self.temperature >= 0.0, "temperature", self.temperature, ">= 0")
        _check(math.isfinite(self.length_penalty), "length_penalty", self.length_penalty, "a finite number")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
