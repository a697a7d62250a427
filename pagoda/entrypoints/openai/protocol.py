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
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

_STRUCTURED = "structured output (guided decoding)"
_MULTIMODAL = "multimodal input"

# Fields the generation endpoints do not implement: name -> (values that mean "off", what it is).
GENERATION_NOT_SUPPORTED: dict[str, tuple[tuple, str]] = {
    "guided_json": ((None,), _STRUCTURED),
    "guided_regex": ((None,), _STRUCTURED),
    "guided_choice": ((None,), _STRUCTURED),
    "guided_grammar": ((None,), _STRUCTURED),
    "guided_decoding_backend": ((None,), _STRUCTURED),
    "guided_whitespace_pattern": ((None,), _STRUCTURED),
    "structural_tag": ((None,), _STRUCTURED),
    "structured_outputs": ((None,), _STRUCTURED),
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


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    not_supported: ClassVar[dict[str, tuple[tuple, str]]] = {}


class StreamOptions(OpenAIBaseModel):
    include_usage: Optional[bool] = True
    continuous_usage_stats: Optional[bool] = False


class ResponseFormat(OpenAIBaseModel):
    # OpenAI's and vLLM's types are "text", "json_object", "json_schema" (and vLLM's "structural_tag");
    # only "text" is implemented, the others are refused by name (serving_engine.check_response_format).
    type: str
    json_schema: Optional[dict[str, Any]] = None


class SamplingFields(OpenAIBaseModel):
    """Fields shared by completions and chat completions; names are SamplingParams' where they map 1:1."""

    not_supported: ClassVar[dict[str, tuple[tuple, str]]] = GENERATION_NOT_SUPPORTED

    model: Optional[str] = None
    n: int = 1
    best_of: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    use_beam_search: bool = False
    length_penalty: float = 1.0  # beam search only
    logit_bias: Optional[dict[str, float]] = None
    allowed_token_ids: Optional[list[int]] = None
    bad_words: Optional[list[str]] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    prompt_logprobs: Optional[int] = None
    truncate_prompt_tokens: Optional[int] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    priority: int = 0
    request_id: Optional[str] = None
    return_tokens_as_token_ids: Optional[bool] = None
    return_token_ids: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None


class CompletionRequest(SamplingFields):
    prompt: Union[list[int], list[list[int]], str, list[str]]
    max_tokens: Optional[int] = 16
    logprobs: Optional[int] = None
    echo: Optional[bool] = False
    suffix: Optional[str] = None
    add_special_tokens: bool = True


class ChatMessage(OpenAIBaseModel):
    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: Optional[int] = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = 0
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: Optional[list[dict[str, str]]] = None
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None  # no effect: tool calls are not parsed
    reasoning_effort: Optional[str] = None  # handed to the chat template, as vLLM does
    include_reasoning: bool = True  # no effect without a reasoning parser (vLLM: the same)
    return_prompt_text: Optional[bool] = None


class EmbeddingRequest(OpenAIBaseModel):
    not_supported: ClassVar[dict[str, tuple[tuple, str]]] = EMBEDDING_NOT_SUPPORTED

    model: Optional[str] = None
    input: Optional[Union[list[int], list[list[int]], str, list[str]]] = None
    encoding_format: Literal["float", "base64"] = "float"
    embed_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # of base64 output
    endianness: Literal["native", "little", "big"] = "native"  # of base64 output
    dimensions: Optional[int] = None
    user: Optional[str] = None
    truncate_prompt_tokens: Optional[int] = None
    add_special_tokens: bool = True
    priority: int = 0
    request_id: Optional[str] = None
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
    tokens: list[int]
