"""What every OpenAI endpoint shares: model names, request ids, field checks, tokenizing, length checks,
the request → SamplingParams mapping, logprob rendering, usage and SSE framing.

Invariants:
- `check_fields()` runs first on every request: a known field Pagoda does not implement
  (protocol.py's `not_supported` tables) set to anything but a neutral value is a 400 naming it and
  saying "not supported yet"; an unknown key is ignored with a warning naming it (vLLM's rule).
- `sampling_params()` maps every request field whose name is a SamplingParams field, so fields the
  engine gains later are passed through without a change here; a field the engine lacks is refused
  with a 400 naming it unless its value is the neutral one (e.g. presence_penalty=0). The structured-output
  fields (guided_*, structural_tag, structured_outputs, response_format) become the one
  `SamplingParams.structured_outputs` through structured_request.py, for both endpoints; they are checked
  first in `check_generation_request` (a 400 naming the field, before tokenizing; with use_beam_search, which
  applies no constraint, a 400 naming use_beam_search).
- logprobs / prompt_logprobs of -1 mean the whole vocabulary and are resolved to the vocabulary size
  here, checked against max_logprobs (-1 there: no limit), as vLLM does; the engine never sees -1.
- `usage.prompt_tokens_details` is sent only with --enable-prompt-tokens-details and only when some
  prompt tokens came from the prefix cache (vLLM's `if enable_prompt_tokens_details and
  num_cached_tokens`): in full responses and the final usage chunk of a stream; full responses
  otherwise carry `"prompt_tokens_details": null`, as vLLM's do.
- Unset fields take the model's generation-config defaults (`ModelConfig.get_diff_sampling_param`),
  then SamplingParams' own defaults.
- Every check that can fail on user input raises APIError(400, param=<field>) before anything is
  sent to the engine; `add_request()` turns the engine's own ValueError/TypeError into the same.
- Admission order of every endpoint: cheap field checks and the limits of limits.py (n/best_of, the
  pending-request capacity) first, then the prompt-size check, then tokenizing (`tokenize_prompt`:
  on a worker thread for large texts, offload.py), then length and response-size checks, then the
  capacity once more and the registration of all its engine requests with no await in between, so a
  request is either registered whole or not at all. After registration, every exit (error, client
  gone, a stream never iterated) aborts what was registered (`ResponseStream`, the handlers' finally).
- Engine exceptions become the answers of errors.ENGINE_ERRORS wherever they surface (`engine_errors`);
  engine request ids are the response id plus a random suffix (`internal_id`), so two clients
  sending the same request_id never collide in the engine.
- What reaches the log from a request is safe to print: the request id matches REQUEST_ID_PATTERN,
  prompts and params are written with repr (escaped), unknown field names as a repr'd list.
- Logprob values are finite in JSON: -inf is written as -9999.0, as vLLM does.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import secrets
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import msgspec
from fastapi import Request

from pagoda.engine.async_llm import AsyncLLM, RequestStream
from pagoda.entrypoints.openai.errors import APIError, engine_error, param_from_message
from pagoda.entrypoints.openai.limits import RequestLimits
from pagoda.entrypoints.openai.offload import Offloader
from pagoda.entrypoints.openai.protocol import NO_EFFECT, lone_surrogate
from pagoda.entrypoints.openai.structured_request import STRUCTURED_FIELDS, structured_outputs_of
from pagoda.outputs import Logprob
from pagoda.sampling_params import SamplingParams, StructuredOutputsParams

logger = logging.getLogger(__name__)

_SP_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams) if f.init) - {
    "all_stop_token_ids", "bad_words_token_ids", "logits_processors", "output_kind"}
# Fields the API accepts that an older engine may lack, with the value that means "off".
_NEUTRAL = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
            "logit_bias": {}, "allowed_token_ids": None, "bad_words": [], "truncate_prompt_tokens": None}
_GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens")
_OUTPUT_KIND = getattr(importlib.import_module("pagoda.sampling_params"), "RequestOutputKind", None)
_JSON = msgspec.json.Encoder()
_MIN_LOGPROB = -9999.0
_LOGGED_FIELDS = 20


@dataclass
class ServingConfig:
    """Server-wide settings the endpoints read (from the command line)."""

    served_model_names: list[str]
    response_role: str = "assistant"
    chat_template: str | None = None
    chat_template_content_format: str = "auto"
    return_tokens_as_token_ids: bool = False
    enable_prompt_tokens_details: bool = False
    enable_request_id_headers: bool = False
    log_requests: bool = True
    max_log_len: int | None = None
    limits: RequestLimits = field(default_factory=RequestLimits)
    trust_request_chat_template: bool = False
    chat_template_render_timeout: float = 5.0
    reasoning_parser: str = ""  # a ReasoningParserManager name; "" splits nothing
    tool_call_parser: str = ""  # a ToolParserManager name (--enable-auto-tool-choice); "" parses no tool calls
    extra: dict = field(default_factory=dict)


class OpenAIServing:
    def __init__(self, engine: AsyncLLM, config: ServingConfig, offload: Offloader | None = None) -> None:
        self.engine = engine
        self.config = config
        self.limits = config.limits
        self.offload = offload if offload is not None else Offloader()
        if engine.tokenizer is not None:
            # transformers resets a fast tokenizer's truncation/padding state on its first encode; doing
            # that here, once, leaves later encodes (on the loop and the offload threads) only reading it.
            engine.tokenizer.encode("warm-up", add_special_tokens=False)
        self.model_name = config.served_model_names[0]
        self.tokenizer = engine.tokenizer
        model_config = engine.model_config
        self.max_model_len = model_config.max_model_len
        self.max_logprobs = model_config.max_logprobs
        self.vocab_size = model_config.vocab_size
        getter = getattr(model_config, "get_diff_sampling_param", None)
        diff = getter() if callable(getter) else {}
        self.default_sampling = {k: v for k, v in diff.items() if k in _GENERATION_DEFAULTS}

    # ---- requests -----------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.config.served_model_names:
            raise APIError(f"The model `{model}` does not exist.", 404, "model")

    @property
    def extra_fields_taken(self) -> tuple[str, ...]:
        """Fields of `not_supported` that this endpoint implements for the model it serves (none by default)."""
        return ()

    def check_fields(self, request: Any) -> None:
        """400 for a known-but-unimplemented field set to a non-neutral value; a warning naming unknown keys."""
        unknown = []
        taken = self.extra_fields_taken
        for name, value in (request.model_extra or {}).items():
            if name in taken:
                continue  # this endpoint applies it (e.g. chat's mm_processor_kwargs for a model that takes images)
            if name in request.not_supported:
                neutral, what = request.not_supported[name]
                if not any(value == n and type(value) is type(n) for n in neutral):
                    allowed = " or ".join("omitted" if n is None else repr(n) for n in neutral)
                    raise APIError(f"{name} is not supported yet ({what}); allowed: {allowed}, got "
                                   f"{_short(value)}", 400, name)
            elif name not in NO_EFFECT:
                unknown.append(name)
        if unknown:  # repr'd, at most _LOGGED_FIELDS names of at most 60 characters: one bounded, escaped line
            names = sorted(unknown)
            shown = [_short(n, 60) for n in names[:_LOGGED_FIELDS]]
            more = f" (and {len(names) - _LOGGED_FIELDS} more)" if len(names) > _LOGGED_FIELDS else ""
            logger.warning("The following fields were present in the request but ignored: [%s]%s", ", ".join(shown),
                           more)

    def check_generation_request(self, request: Any, forced: StructuredOutputsParams | None = None) -> None:
        """The checks /v1/completions and /v1/chat/completions share, before tokenizing. `forced`: the output
        constraint tool_choice implies (chat), which the request's structured-output fields may only tune."""
        self.check_model(request.model)
        self.check_generative()
        self.check_fields(request)
        constraint = structured_outputs_of(request, None if forced is None else ("tool_choice", forced))
        if constraint is not None and request.use_beam_search:  # structured_outputs_of checks the fields too
            raise APIError("use_beam_search cannot be combined with structured output (guided_*, structured_outputs, "
                           "response_format other than text): beam search applies no output constraint", 400,
                           "use_beam_search")
        if request.stream_options is not None and not request.stream:
            raise APIError("stream_options can only be set when stream is true", 400, "stream_options")
        if request.stream and request.prompt_logprobs is not None:
            raise APIError("prompt_logprobs are not available when stream is true (as in vLLM); allowed with "
                           "stream: omitted", 400, "prompt_logprobs")
        if request.length_penalty != 1.0 and not request.use_beam_search:
            raise APIError(f"length_penalty applies to beam search only: set use_beam_search to true, or leave "
                           f"length_penalty at 1.0 (got {request.length_penalty})", 400, "length_penalty")

    def resolve_logprobs(self, value: Any, name: str) -> int | None:
        """A logprobs count as the engine takes it: -1 is the whole vocabulary; at most max_logprobs."""
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise APIError(f"{name} must be -1 (the whole vocabulary) or an integer >= 0, got {value!r}", 400, name)
        count = self.vocab_size if value == -1 else min(value, self.vocab_size)
        limit = self.vocab_size if self.max_logprobs == -1 else self.max_logprobs
        if count > limit:
            asked = f"{name}=-1 (the whole vocabulary, {count} tokens)" if value == -1 else f"{name}={value}"
            raise APIError(f"{asked} is more than the server's max_logprobs={self.max_logprobs} (--max-logprobs; "
                           f"allowed: 0 to {limit})", 400, name)
        return count

    def check_generative(self) -> None:
        if getattr(self.engine.model_config, "runner_type", "generate") == "pooling":
            raise APIError("this model is an embedding model: use /v1/embeddings (it cannot generate text)", 400,
                           "model")

    def request_id(self, raw_request: Request | None, given: str | None, prefix: str) -> str:
        """The response id: `prefix-` + the body's request_id, else X-Request-Id, else a random one (both
        given ones are checked against REQUEST_ID_PATTERN, protocol.py / middleware.py)."""
        header = raw_request.headers.get("x-request-id") if raw_request is not None else None
        return f"{prefix}-{given or header or uuid.uuid4().hex}"

    @staticmethod
    def internal_id(response_id: str) -> str:
        """The engine's id for a response's requests: unique even when clients reuse a request_id."""
        return f"{response_id}-{secrets.token_hex(4)}"

    def sequences(self, request: Any, num_prompts: int = 1) -> int:
        """Engine requests per prompt (max(n, best_of)) within the caps; 503 if they do not fit now."""
        count = self.limits.num_sequences(request, getattr(self.engine, "max_pending_requests", None), num_prompts)
        self.limits.check_capacity(self.engine, count * num_prompts)
        return count

    async def tokenize_prompt(self, text: str, add_special_tokens: bool, truncate: int | None = None,
                              field: str = "prompt") -> list[int]:
        """`encode()` after the size check, off the event loop for large texts."""
        self.require_tokenizer("text input")
        self.limits.check_prompt_chars(text, field, self.max_model_len)
        where = lone_surrogate(text)
        if where is not None:  # a rendered template can produce one even though no input held one
            raise APIError(f"{field} holds a lone surrogate {where}: it cannot be tokenized", 400, field)
        return await self.offload.run(len(text), self.encode, text, add_special_tokens, truncate)

    def require_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise APIError(f"{what} needs a tokenizer, but the server runs with --skip-tokenizer-init; "
                           "send token ids instead", 400)
        return self.tokenizer

    def encode(self, text: str, add_special_tokens: bool, truncate: int | None = None) -> list[int]:
        """Token ids of `text`, as the offline engine makes them (lower-casing, truncation keeping specials)."""
        tokenizer = self.require_tokenizer("text input")
        self._keep(truncate)
        try:
            if add_special_tokens:
                return list(self.engine.engine.processor.parse_prompt(text, truncate)[1])
            if getattr(self.engine.model_config, "do_lower_case", False):
                text = text.lower()
            ids = list(tokenizer.encode(text, add_special_tokens=False))
        except ValueError as exc:
            raise APIError(str(exc), 400, "truncate_prompt_tokens" if "truncate" in str(exc) else "prompt") from None
        except APIError:
            raise
        except Exception as exc:  # noqa: BLE001 - the tokenizer refused this text: a bad input, not a crash
            raise APIError(f"the prompt could not be tokenized: {type(exc).__name__}: {exc}", 400, "prompt") from None
        return self.truncate(ids, truncate)

    def truncate(self, ids: list[int], truncate: int | None) -> list[int]:
        keep = self._keep(truncate)
        return ids if keep is None else ids[-keep:]

    def _keep(self, truncate: int | None) -> int | None:
        if truncate is None:
            return None
        if truncate == -1:
            return self.max_model_len
        if not isinstance(truncate, int) or truncate < 1:
            raise APIError(f"truncate_prompt_tokens must be -1 or an integer >= 1, got {truncate!r}", 400,
                           "truncate_prompt_tokens")
        return truncate

    def check_length(self, num_prompt: int, max_tokens: int | None, max_tokens_field: str,
                     prompt_field: str) -> int:
        """The max_tokens to run with; a 400 giving both numbers when prompt + max_tokens do not fit."""
        limit = self.max_model_len
        if num_prompt == 0:
            raise APIError(f"{prompt_field} is empty: it must have at least one token", 400, prompt_field)
        if num_prompt >= limit:
            raise APIError(f"This model's maximum context length is {limit} tokens. However, your request has "
                           f"{num_prompt} input tokens in {prompt_field}, which leaves no room for a completion. "
                           f"Please reduce the length of the input.", 400, prompt_field)
        if max_tokens is None:
            return limit - num_prompt
        if isinstance(max_tokens, int) and num_prompt + max_tokens > limit:
            raise APIError(f"This model's maximum context length is {limit} tokens. However, you requested "
                           f"{num_prompt + max_tokens} tokens ({num_prompt} in the {prompt_field}, {max_tokens} in "
                           f"the completion). Please reduce the length of the {prompt_field} or {max_tokens_field}.",
                           400, max_tokens_field)
        return max_tokens

    def sampling_params(self, request: Any, overrides: dict[str, Any], stream: bool) -> SamplingParams:
        """SamplingParams from every SamplingParams-named field of `request`, then `overrides`; the output constraint
        from the structured-output fields (structured_request.py), or from overrides["structured_outputs"] (an
        endpoint's own, e.g. tool_choice's; the request may then not give one too)."""
        values = {name: getattr(request, name) for name in type(request).model_fields if name not in STRUCTURED_FIELDS}
        values.update(overrides)
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            if name in _SP_FIELDS:
                kwargs[name] = value
            elif name in _NEUTRAL and value != _NEUTRAL[name]:
                raise APIError(f"{name} is not supported by this version of the engine", 400, name)
        for name, value in self.default_sampling.items():
            if name in _SP_FIELDS and values.get(name) is None and name not in overrides:
                kwargs[name] = value
        if "logit_bias" in kwargs:
            kwargs["logit_bias"] = _int_keys(kwargs["logit_bias"])
        best_of = kwargs.get("best_of")
        if best_of is not None and "best_of" not in _SP_FIELDS and best_of != kwargs.get("n", 1):
            raise APIError("best_of is not supported by this version of the engine", 400, "best_of")
        if stream and best_of is not None and best_of > kwargs.get("n", 1):
            raise APIError("best_of > n cannot be streamed: the best sequences are known only at the end", 400,
                           "best_of")
        for name in ("logprobs", "prompt_logprobs"):
            if name in kwargs:
                kwargs[name] = self.resolve_logprobs(kwargs[name], name)
        forced = kwargs.pop("structured_outputs", None)  # tool_choice's constraint (serving_chat.py)
        constraint = structured_outputs_of(request, None if forced is None else ("tool_choice", forced))
        if constraint is not None:
            kwargs["structured_outputs"] = constraint
        if _OUTPUT_KIND is not None:  # streams diff cumulative outputs; a full response needs only the last
            kwargs["output_kind"] = _OUTPUT_KIND.CUMULATIVE if stream else _OUTPUT_KIND.FINAL_ONLY
        try:
            return SamplingParams(**kwargs)
        except (ValueError, TypeError) as exc:
            raise APIError(str(exc), 400, param_from_message(str(exc), _SP_FIELDS | {"best_of"})) from None

    def add_request(self, request_id: str, prompt: dict, params: Any, priority: int, params_fields=_SP_FIELDS
                    ) -> RequestStream:
        """Send one request; the engine's ValueError/TypeError (bad ids, priority without --scheduling-policy
        priority, ...) becomes a 400 naming the field its message starts with."""
        if self.config.log_requests:
            self._log_request(request_id, prompt, params)
        with engine_errors(params_fields):
            return self.engine.add_request(request_id, prompt, params, priority)

    def _log_request(self, request_id: str, prompt: Any, params: Any) -> None:
        limit = self.config.max_log_len
        if isinstance(prompt, dict):
            text, ids = prompt.get("prompt"), prompt.get("prompt_token_ids")
        else:  # a chat with images (multimodal.processing.ProcessedPrompt)
            text, ids = prompt.text, prompt.token_ids
        if limit is not None:
            text = text[:limit] if text is not None else None
            ids = ids[:limit] if ids is not None else None
        logger.info("Received request %s: prompt: %r, params: %s, prompt_token_ids: %s", request_id, text, params, ids,
                    extra={"request_id": request_id})

    # ---- responses ----------------------------------------------------------------------------
    def usage(self, num_prompt: int, num_completion: int, num_cached: int | None = None,
              full_response: bool = False) -> dict:
        """OpenAI's usage object; `num_cached` for a full response or a stream's final usage chunk."""
        usage: dict[str, Any] = {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
                                 "total_tokens": num_prompt + num_completion}
        if self.config.enable_prompt_tokens_details and num_cached:  # vLLM: only when something was cached
            usage["prompt_tokens_details"] = {"cached_tokens": num_cached}
        elif full_response:
            usage["prompt_tokens_details"] = None
        return usage

    def token_text(self, token_id: int, logprob: Logprob | None, as_ids: bool) -> str:
        if as_ids:
            return f"token_id:{token_id}"
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else ""

    def as_token_ids(self, request: Any) -> bool:
        flag = getattr(request, "return_tokens_as_token_ids", None)
        return self.config.return_tokens_as_token_ids if flag is None else bool(flag)


@contextmanager
def engine_errors(params_fields: frozenset[str] = _SP_FIELDS, user_errors: bool = True) -> Iterator[None]:
    """The engine's refusals and failures as HTTP answers: the exceptions of errors.ENGINE_ERRORS (overloaded,
    dead, deadline, ...) as listed there; with `user_errors` (around add_request, where the engine validates),
    ValueError/TypeError → 400 naming the field the message starts with."""
    try:
        yield
    except APIError:
        raise
    except Exception as exc:
        mapped = engine_error(exc)
        if mapped is not None:
            raise mapped from None
        if not user_errors or not isinstance(exc, (ValueError, TypeError)):
            raise
        param = param_from_message(str(exc), params_fields | {"prompt", "prompt_token_ids", "priority"})
        raise APIError(str(exc), 400, "prompt" if param == "prompt_token_ids" else param) from None


class ResponseStream:
    """The body of a streamed response: `body`'s chunks; `aclose()` also aborts `streams`, even when the
    body was never iterated (an async generator that never started runs no `finally` when closed)."""

    def __init__(self, body: Any, streams: list[Any]) -> None:
        self.body, self.streams = body, streams

    def __aiter__(self) -> "ResponseStream":
        return self

    async def __anext__(self) -> bytes:
        return await self.body.__anext__()

    async def aclose(self) -> None:
        try:
            await self.body.aclose()
        finally:
            for stream in self.streams:
                stream.abort()


def prompt_logprobs_json(positions: list | None) -> list | None:
    """vLLM's `prompt_logprobs` field: per prompt position None or {token id: {logprob, rank, decoded_token}}."""
    if positions is None:
        return None
    return [None if p is None else {str(tid): {"logprob": clamp_logprob(lp.logprob), "rank": lp.rank,
                                               "decoded_token": lp.decoded_token} for tid, lp in p.items()}
            for p in positions]


def clamp_logprob(value: float) -> float:
    return max(value, _MIN_LOGPROB)


def sse(obj: Any) -> bytes:
    return b"data: " + _JSON.encode(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def now() -> int:
    return int(time.time())


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value[:limit] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _int_keys(bias: dict) -> dict[int, float]:
    result = {}
    for key, value in bias.items():
        try:
            token = int(key)
            result[token] = float(value)
        except (TypeError, ValueError):
            raise APIError(f"logit_bias keys must be token ids (integers as strings), got {_short(key)}", 400,
                           "logit_bias") from None
        if not 0 <= token < 1 << 63:
            raise APIError(f"logit_bias keys must be token ids (0 <= id < 2**63, then within the vocabulary), got "
                           f"{_short(key)}", 400, "logit_bias")
    return result
