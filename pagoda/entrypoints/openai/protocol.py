"""Request bodies of the OpenAI-compatible API (pydantic), with vLLM's extra parameters.

Responses are built as plain dicts by the serving modules (faster to encode, same JSON).

Invariants:
- Sampling fields default to None, meaning "not given": SamplingParams' defaults (or the model's
  generation-config defaults) then apply. Only fields whose OpenAI default differs (completions'
  `max_tokens=16`, `n=1`, the booleans) carry a value.
- Every field of OpenAI's or vLLM's request bodies is in exactly one of three places: declared on a
  model below (implemented), in a model's `not_supported` table (a 400 naming it unless its value is
  one of the neutral values listed, checked by `check_fields` in serving_engine.py), or in
  `NO_EFFECT` (metadata that changes no output, accepted as vLLM accepts it).
- Any other key is unknown: accepted and ignored as vLLM does, with a warning naming it in the log.
  Wrong types are rejected by pydantic and answered as a 400 naming the field (errors.py).
- Nothing out of range gets past parsing: every integer field (and list of integers) holds a 64-bit
  value at most (`Int64`; token ids also >= 0), every float is finite (no NaN/Infinity, which
  Python's JSON parser accepts), and no string anywhere in a body, nested ones included, holds a
  lone surrogate ("\\ud800", valid JSON but not valid Unicode, which a tokenizer cannot encode).
  Each is a 400 naming the field, raised before a request is tokenized or sent to the engine.
- `request_id` matches `REQUEST_ID_PATTERN` (letters, digits, `._:-`, 1 to 128 characters), so it
  can be echoed in responses and headers and written to logs as it is; middleware.py applies the same
  rule to the X-Request-Id header.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MULTIMODAL = "multimodal input"

# Fields the generation endpoints do not implement: name -> (values that mean "off", what it is).
GENERATION_NOT_SUPPORTED: dict[str, tuple[tuple, str]] = {
    "logits_processors": ((None, []), "per-request logits processors by qualified name"),
    "logprob_token_ids": ((None,), "logprobs of chosen token ids"),
    "prompt_embeds": ((None,), "prompt embeddings"),
    "watermarking": ((None, False), "watermarking"),
    "truncation_side": ((None, "left"), "truncating prompts from the right"),
    "cache_salt": ((None,), "prefix-cache salting"),
    "kv_transfer_params": ((None,), "disaggregated serving"),
    "ec_transfer_params": ((None,), "disaggregated serving"),
    "vllm_xargs": ((None, {}), "extension arguments"),
    "repetition_detection": ((None,), "repetition detection"),
    "thinking_token_budget": ((None, -1), "thinking-token budgets"),
    "stream_interval": ((None, 1), "batching several tokens per streamed chunk"),
    "routed_experts_prompt_start": ((None, 0), "returning MoE routing"),
    "return_token_offsets": ((None, False), "the /render endpoints"),
    "return_mm_kwargs": ((None, True), "the /render endpoints"),
    "mm_processor_kwargs": ((None, {}), _MULTIMODAL),
    "media_io_kwargs": ((None, {}), _MULTIMODAL),
    # OpenAI's chat fields
    "audio": ((None,), "audio output"),
    "modalities": ((None, ["text"]), "non-text output"),
    "prediction": ((None,), "predicted outputs"),
    "web_search_options": ((None,), "web search"),
    "functions": ((None, []), "the deprecated `functions` (use tools)"),
    "function_call": ((None, "none"), "the deprecated `function_call` (use tool_choice)"),
    "store": ((None, False), "stored completions"),
    "service_tier": ((None, "auto", "default"), "service tiers"),
    "verbosity": ((None,), "verbosity control"),
}

EMBEDDING_NOT_SUPPORTED: dict[str, tuple[tuple, str]] = {
    "messages": ((None,), "chat input to /v1/embeddings (send `input`)"),
    "truncation_side": ((None, "left"), "truncating prompts from the right"),
    "padding": ((None, "do_not_pad"), "padding prompts"),
    "mm_processor_kwargs": ((None, {}), _MULTIMODAL),
    "activation": ((None,), "classification activations (embeddings take use_activation)"),
    "softmax": ((None,), "classification activations (embeddings take use_activation)"),
}

TOKENIZE_NOT_SUPPORTED: dict[str, tuple[tuple, str]] = {
    "mm_processor_kwargs": ((None, {}), _MULTIMODAL),
}

# Accepted with no effect, as vLLM accepts them: metadata about the caller or the request.
NO_EFFECT = frozenset({"user", "safety_identifier", "session_id", "metadata", "prompt_cache_key"})


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # what the engine's msgpack messages can carry
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]  # the vocabulary check comes later (Processor)
REQUEST_ID_MAX_LEN = 128
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
RequestId = Annotated[str, Field(min_length=1, max_length=REQUEST_ID_MAX_LEN, pattern=REQUEST_ID_PATTERN)]
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """Where a string inside `value` (str, list, dict keys and values) holds a lone surrogate, else None."""
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        return None if match is None else f"at character {match.start()} (\\u{ord(match.group()):04x})"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            where = lone_surrogate(item)
            if where is not None:
                return f"in item {i}, {where}"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = lone_surrogate(key) or lone_surrogate(item)
            if where is not None:
                return f"in key {ascii(key)}, {where}"
    return None


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    not_supported: ClassVar[dict[str, tuple[tuple, str]]] = {}

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        where = lone_surrogate(value)
        if where is not None:
            raise ValueError(f"holds a lone surrogate {where}: strings must be valid Unicode (UTF-8 encodable)")
        return value


class StreamOptions(OpenAIBaseModel):
    include_usage: Optional[bool] = True
    continuous_usage_stats: Optional[bool] = False


class ResponseFormat(OpenAIBaseModel):
    # OpenAI's and vLLM's types: "text", "json_object", "json_schema" ({"name", "schema", "strict",
    # "description"}) and vLLM's "structural_tag" (its "structures"/"triggers" or "format" stay extra keys);
    # checked and mapped to the output constraint by structured_request.py.
    type: str
    json_schema: Optional[dict[str, Any]] = None


class SamplingFields(OpenAIBaseModel):
    """Fields shared by completions and chat completions; names are SamplingParams' where they map 1:1."""

    not_supported: ClassVar[dict[str, tuple[tuple, str]]] = GENERATION_NOT_SUPPORTED

    model: Optional[str] = None
    n: Int64 = 1
    best_of: Optional[Int64] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[Int64] = None
    min_p: Optional[float] = None
    seed: Optional[Int64] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[TokenId]] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: Int64 = 0
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    use_beam_search: bool = False
    length_penalty: float = 1.0  # beam search only
    logit_bias: Optional[dict[str, float]] = None  # keys: token ids, checked in serving_engine._int_keys
    allowed_token_ids: Optional[list[TokenId]] = None
    bad_words: Optional[list[str]] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    prompt_logprobs: Optional[Int64] = None
    truncate_prompt_tokens: Optional[Int64] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    priority: Int64 = 0
    request_id: Optional[RequestId] = None
    return_tokens_as_token_ids: Optional[bool] = None
    return_token_ids: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    # structured output (vLLM <= 0.11's guided_* fields and its newer structured_outputs object): mapped to
    # SamplingParams.structured_outputs by structured_request.py, which checks their values
    guided_json: Optional[Union[dict[str, Any], str]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    guided_decoding_backend: Optional[str] = None
    guided_whitespace_pattern: Optional[str] = None
    structural_tag: Optional[str] = None
    structured_outputs: Optional[dict[str, Any]] = None


class CompletionRequest(SamplingFields):
    # Token ids are checked against the vocabulary before anything is registered (Processor).
    prompt: Union[list[int], list[list[int]], str, list[str]]
    max_tokens: Optional[Int64] = 16
    logprobs: Optional[Int64] = None
    echo: Optional[bool] = False
    suffix: Optional[str] = None
    add_special_tokens: bool = True


class ChatMessage(OpenAIBaseModel):
    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: Optional[Int64] = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: Optional[Int64] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[Int64] = 0
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: Optional[list[dict[str, str]]] = None
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None  # false: at most one call for "required" (the schema allows one); "auto" returns every call its parser finds (vLLM: the same for most parsers)
    reasoning_effort: Optional[str] = None  # handed to the chat template, as vLLM does
    include_reasoning: bool = True  # false drops the reasoning (--reasoning-parser); no effect without one (vLLM)
    return_prompt_text: Optional[bool] = None


class EmbeddingRequest(OpenAIBaseModel):
    not_supported: ClassVar[dict[str, tuple[tuple, str]]] = EMBEDDING_NOT_SUPPORTED

    model: Optional[str] = None
    input: Optional[Union[list[int], list[list[int]], str, list[str]]] = None
    encoding_format: Literal["float", "base64"] = "float"
    embed_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # of base64 output
    endianness: Literal["native", "little", "big"] = "native"  # of base64 output
    dimensions: Optional[Int64] = None
    user: Optional[str] = None
    truncate_prompt_tokens: Optional[Int64] = None
    add_special_tokens: bool = True
    priority: Int64 = 0
    request_id: Optional[RequestId] = None
    normalize: Optional[bool] = None  # older vLLM's name for use_activation
    use_activation: Optional[bool] = None  # embeddings: L2-normalize (vLLM's current name)
    cache_salt: Optional[str] = None  # no effect: pooling requests never read the prefix cache


class TokenizeRequest(OpenAIBaseModel):
    """Either `prompt` (text) or `messages` (a chat, rendered with the chat template)."""

    not_supported: ClassVar[dict[str, tuple[tuple, str]]] = TOKENIZE_NOT_SUPPORTED

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: Optional[bool] = None  # default: True for prompt, False for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    return_token_strs: Optional[bool] = False


class DetokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = None
    tokens: list[TokenId]
