"""Processor: turns a user's prompt and params into a validated EngineCoreRequest.

Invariants:
- Everything a user can get wrong is checked here, before the engine core sees the request, and
  raises ValueError naming the field and the allowed values: token ids of the prompt, logit_bias,
  allowed_token_ids, stop_token_ids and bad_words inside the vocabulary; lengths against
  max_model_len; priority and seed within 64 bits; prompt dicts hold only the keys that take effect;
  priority != 0 only under scheduling_policy="priority" (vLLM's rule). logprobs / prompt_logprobs
  of -1 mean the whole vocabulary (checked against max_logprobs, itself -1 for no limit) and reach
  the engine as the vocabulary size.
- The SamplingParams inside an EngineCoreRequest are the engine's own copy: `all_stop_token_ids`
  holds EOS (unless ignore_eos) and the model's generation-config EOS ids plus stop_token_ids, and
  `bad_words_token_ids` holds each bad word tokenized with and without a leading space (vLLM's rule).
- `truncate_prompt_tokens=k` keeps the last k tokens of a prompt (-1: max_model_len). A text prompt
  keeps its special tokens ([CLS] ... [SEP], BOS): the text in between is cut from the left, as a
  Hugging Face tokenizer with truncation_side="left" does (vLLM's default).
- A pooling request (PoolingParams) has no sampling params; its prompt may fill max_model_len.
"""

from __future__ import annotations

import time
from typing import Any

from pagoda.config import ModelConfig, StructuredOutputsConfig
from pagoda.core.request import EngineCoreRequest
from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import SamplingParams


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1  # what the engine-core messages (msgpack) can carry


class Processor:
    def __init__(self, model_config: ModelConfig, tokenizer: Any | None, scheduling_policy: str = "fcfs",
                 structured_outputs_config: StructuredOutputsConfig | None = None) -> None:
        self.model_config = model_config
        self.structured_outputs_config = structured_outputs_config or StructuredOutputsConfig()
        self.scheduling_policy = scheduling_policy
        self.tokenizer = tokenizer
        self.eos_token_id = _eos_token_id(model_config, tokenizer)
        self.extra_eos_ids = _generation_config_eos_ids(model_config)
        self._mm_processor = None  # multimodal.processing.MultiModalProcessor, made for the first image prompt

    @property
    def stop_token_ids(self) -> set[int]:
        """Every id that ends generation unless ignore_eos: EOS and the generation config's EOS ids."""
        ids = set(self.extra_eos_ids)
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        return ids

    # ---- prompts --------------------------------------------------------------------------------
    def parse_prompt(self, prompt: Any, truncate_prompt_tokens: int | None = None) -> tuple[str | None, list[int]]:
        """(prompt text or None, prompt token ids) for every accepted prompt shape, truncated if asked."""
        text, ids, _ = self.parse_prompt_and_images(prompt, truncate_prompt_tokens)
        return text, ids

    def parse_prompt_and_images(self, prompt: Any, truncate_prompt_tokens: int | None = None
                                ) -> tuple[str | None, list[int], list | None]:
        """parse_prompt's (text, ids) plus the prompt's images (multimodal/inputs.ImageInput, None without)."""
        if isinstance(prompt, dict) and "multi_modal_data" in prompt:
            return self._parse_multimodal(prompt, truncate_prompt_tokens)
        from pagoda.multimodal.processing import ProcessedPrompt

        if isinstance(prompt, ProcessedPrompt):  # chat with images: rendered and processed already
            return prompt.text, list(prompt.token_ids), prompt.images or None
        keep = self._truncation(truncate_prompt_tokens)
        if isinstance(prompt, str):
            return prompt, self._encode(prompt, keep), None
        if isinstance(prompt, dict):
            _check_prompt_keys(prompt)
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
                    raise ValueError("prompt_token_ids must be a list of integers")
                ids = list(ids)
                return prompt.get("prompt"), ids[-keep:] if keep is not None and len(ids) > keep else ids, None
            if "prompt" in prompt and isinstance(prompt["prompt"], str):
                return prompt["prompt"], self._encode(prompt["prompt"], keep), None
        raise ValueError(
            "prompt must be a str, {'prompt': str} or {'prompt_token_ids': [int, ...]}, "
            f"got {type(prompt).__name__}"
        )

    def _parse_multimodal(self, prompt: dict, truncate_prompt_tokens: int | None):
        from pagoda.model_executor.models.registry import accepts_images
        from pagoda.multimodal.processing import images_of

        config = self.model_config
        if not accepts_images(config.architecture):
            raise ValueError(f"prompt key 'multi_modal_data': model {config.served_model_name!r} "
                             f"({config.architecture}) does not take images")
        for key in prompt:
            if key not in ("prompt", "multi_modal_data", "mm_processor_kwargs"):
                if key in _UNSUPPORTED_PROMPT_KEYS:
                    raise ValueError(f"prompt key {key!r}: {_UNSUPPORTED_PROMPT_KEYS[key]}")
                raise ValueError(f"prompt key {key!r}: a prompt with multi_modal_data takes 'prompt' (text with the "
                                 "model's image token per image), 'multi_modal_data' and 'mm_processor_kwargs'")
        text = prompt.get("prompt")
        if not isinstance(text, str):
            raise ValueError("a prompt with multi_modal_data needs 'prompt': the text, with the model's image token "
                             "where each image goes")
        if truncate_prompt_tokens is not None:
            raise ValueError("truncate_prompt_tokens is not supported yet with multi_modal_data (it could cut "
                             "through an image's tokens)")
        options = prompt.get("mm_processor_kwargs") or {}
        if not isinstance(options, dict):
            raise ValueError(f"mm_processor_kwargs must be a dict, got {type(options).__name__}")
        images = images_of(prompt["multi_modal_data"])
        self._check_image_count(len(images), "multi_modal_data['image']")
        ids, inputs = self.mm_processor.process(text, images, options)
        return text, ids, inputs or None

    def _check_image_count(self, count: int, where: str) -> None:
        from pagoda.config import MM_DEFAULT_LIMIT

        limit = self.model_config.limit_mm_per_prompt.get("image", MM_DEFAULT_LIMIT)
        if count > limit:
            raise ValueError(f"{where}: {count} images, more than the {limit} a prompt may hold "
                             "(--limit-mm-per-prompt)")

    @property
    def mm_processor(self):
        """The model's multimodal processor (multimodal/processing.py); ValueError for a text-only model."""
        from pagoda.model_executor.models.registry import accepts_images
        from pagoda.multimodal.processing import MultiModalProcessor

        if not accepts_images(self.model_config.architecture):
            raise ValueError(f"model {self.model_config.served_model_name!r} ({self.model_config.architecture}) "
                             "does not take images")
        if self._mm_processor is None:
            self._mm_processor = MultiModalProcessor(self.model_config)
        return self._mm_processor

    def process_chat_images(self, text: str, images: list, options: dict | None = None):
        """A rendered chat prompt with its images -> a ProcessedPrompt (no special tokens added: the template
        put them in the text)."""
        from pagoda.multimodal.processing import ProcessedPrompt

        self._check_image_count(len(images), "messages")
        ids, inputs = self.mm_processor.process(text, images, options, add_special_tokens=False)
        return ProcessedPrompt(text, ids, inputs)

    def _truncation(self, truncate_prompt_tokens: int | None) -> int | None:
        if truncate_prompt_tokens is None:
            return None
        max_len = self.model_config.max_model_len
        if truncate_prompt_tokens == -1:
            return max_len
        if truncate_prompt_tokens > max_len:
            raise ValueError(f"truncate_prompt_tokens ({truncate_prompt_tokens}) is greater than "
                             f"max_model_len ({max_len}); choose a smaller truncation size")
        return truncate_prompt_tokens

    def _encode(self, text: str, keep: int | None = None) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("prompt text needs a tokenizer, but skip_tokenizer_init=True; pass prompt_token_ids")
        if self.model_config.do_lower_case:
            text = text.lower()
        ids = self.tokenizer.encode(text, add_special_tokens=True)
        if keep is None or len(ids) <= keep:
            return ids
        return _truncate_left(ids, self.tokenizer.encode(text, add_special_tokens=False), keep)

    # ---- requests -------------------------------------------------------------------------------
    def process(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | PoolingParams,
        priority: int = 0,
        arrival_time: float | None = None,
        *,
        check_logprobs_limit: bool = True,
        mm_inputs: list | None = None,
    ) -> EngineCoreRequest:
        """A validated request. `check_logprobs_limit=False` lets the engine's own requests (beam
        search) ask for more logprobs than max_logprobs allows users."""
        arrival_time = arrival_time if arrival_time is not None else time.time()
        if not isinstance(priority, int) or not _INT64_MIN <= priority <= _INT64_MAX:
            raise ValueError(f"priority must be a 64-bit integer in [{_INT64_MIN}, {_INT64_MAX}], got {priority!r}")
        if priority != 0 and self.scheduling_policy != "priority":
            raise ValueError(f"priority={priority} needs scheduling_policy='priority' (--scheduling-policy priority); "
                             f"with scheduling_policy={self.scheduling_policy!r} only priority 0 is allowed")
        if isinstance(params, PoolingParams):
            self._validate_pooling(prompt_token_ids, params)
            return EngineCoreRequest(request_id=request_id, prompt_token_ids=list(prompt_token_ids),
                                     sampling_params=None, eos_token_id=None, arrival_time=arrival_time,
                                     priority=priority, pooling_params=params.clone())
        if self.model_config.runner_type == "pooling":
            raise ValueError("this model was started with task='embed': use LLM.embed/encode (PoolingParams), "
                             "not SamplingParams")
        self._validate(prompt_token_ids, params, check_logprobs_limit)
        params = params.clone()
        for name in ("logprobs", "prompt_logprobs"):  # -1: the whole vocabulary (vLLM)
            if getattr(params, name) == -1:
                setattr(params, name, self.model_config.vocab_size)
        params.all_stop_token_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.stop_token_ids)
        params.bad_words_token_ids = self._bad_words_token_ids(params.bad_words)
        return EngineCoreRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            sampling_params=params,
            eos_token_id=self.eos_token_id,
            arrival_time=arrival_time,
            priority=priority,
            mm_inputs=mm_inputs,
        )

    def _validate(self, prompt_token_ids: list[int], params: SamplingParams, check_logprobs_limit: bool) -> None:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        max_logprobs, max_len = self.model_config.max_logprobs, self.model_config.max_model_len
        vocab = self.model_config.vocab_size
        limit = vocab if max_logprobs == -1 else max_logprobs
        for name in ("logprobs", "prompt_logprobs") if check_logprobs_limit else ("prompt_logprobs",):
            value = getattr(params, name)
            if value is not None and (vocab if value == -1 else value) > limit:
                shown = f"-1 (the whole vocabulary, {vocab})" if value == -1 else str(value)
                raise ValueError(f"{name}={shown} is more than max_logprobs={max_logprobs} (an engine argument)")
        self._validate_prompt(prompt_token_ids)
        if len(prompt_token_ids) >= max_len:
            raise ValueError(
                f"prompt is {len(prompt_token_ids)} tokens long; with max_model_len={max_len} it must be "
                f"at most {max_len - 1} tokens so that at least one token can be generated "
                "(or set truncate_prompt_tokens)"
            )
        self._check_ids("logit_bias", list(params.logit_bias or ()))
        self._check_ids("allowed_token_ids", params.allowed_token_ids or [])
        self._check_ids("stop_token_ids", params.stop_token_ids or [])
        if params.seed is not None and not _INT64_MIN <= params.seed <= _INT64_MAX:
            raise ValueError(f"seed must be a 64-bit integer in [{_INT64_MIN}, {_INT64_MAX}], got {params.seed}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, but skip_tokenizer_init=True")
        if params.bad_words and self.tokenizer is None:
            raise ValueError("bad_words need a tokenizer, but skip_tokenizer_init=True")
        if params.structured_outputs is not None:
            self._validate_structured_outputs(params.structured_outputs)

    def _validate_structured_outputs(self, structured) -> None:
        """Check the constraint compiles (the frontend's cheap check) and fix the backend that serves it."""
        if self.tokenizer is None:
            raise ValueError("structured_outputs needs a tokenizer, but skip_tokenizer_init=True")
        if self.model_config.runner_type != "generate":
            raise ValueError("structured_outputs needs a generative model")
        from pagoda.structured_output import resolve_backend

        structured.backend = resolve_backend(structured, self.structured_outputs_config)

    def _validate_pooling(self, prompt_token_ids: list[int], params: PoolingParams) -> None:
        config = self.model_config
        if config.runner_type != "pooling":
            raise ValueError(f"PoolingParams need an embedding model; this one runs task={config.task!r} "
                             "(start it with task='embed')")
        self._validate_prompt(prompt_token_ids)
        if len(prompt_token_ids) > config.max_model_len:
            raise ValueError(
                f"prompt is {len(prompt_token_ids)} tokens long, more than max_model_len={config.max_model_len}; "
                "shorten it or set truncate_prompt_tokens to keep only its last tokens"
            )
        if params.dimensions is not None:
            hidden = int(getattr(config.hf_config, "hidden_size", 0) or 0)
            matryoshka = getattr(config.hf_config, "matryoshka_dimensions", None) or \
                getattr(config.hf_config, "is_matryoshka", False)
            if not matryoshka:
                raise ValueError(f"dimensions={params.dimensions}: model {config.served_model_name!r} does not "
                                 "support Matryoshka representations; leave dimensions=None")
            if isinstance(matryoshka, list) and params.dimensions not in matryoshka:
                raise ValueError(f"dimensions must be one of {matryoshka}, got {params.dimensions}")
            if hidden and params.dimensions > hidden:
                raise ValueError(f"dimensions must be <= the model's hidden size ({hidden}), got {params.dimensions}")

    def _validate_prompt(self, prompt_token_ids: list[int]) -> None:
        if not prompt_token_ids:
            raise ValueError("prompt is empty; it must have at least one token")
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt_token_ids contains ids outside the vocabulary [0, {vocab}): {bad[:5]}")

    def _check_ids(self, name: str, ids: list[int]) -> None:
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{name} contains token ids outside the vocabulary [0, {vocab}): {bad[:5]}")

    def _bad_words_token_ids(self, bad_words: list[str]) -> list[list[int]]:
        """Each bad word as tokens, alone and after a space when that tokenizes differently (vLLM's rule)."""
        result: list[list[int]] = []
        for word in bad_words:
            plain = self.tokenizer.encode(word.lstrip(), add_special_tokens=False)
            if plain:
                result.append(plain)
            spaced = self.tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
            if spaced and (not plain or (spaced[0] != plain[0] and len(spaced) == len(plain))):
                result.append(spaced)
        self._check_ids("bad_words", [t for word in result for t in word])
        return result


# vLLM's prompt-dict keys (TextPrompt / TokensPrompt / EmbedsPrompt) that Pagoda does not implement yet.
_UNSUPPORTED_PROMPT_KEYS = {
    "mm_processor_kwargs": "it takes effect only with multi_modal_data (a vision-language model's images)",
    "multi_modal_uuids": "multimodal input is not supported yet",
    "prompt_embeds": "prompt embeddings are not supported yet",
    "token_type_ids": "token_type_ids (cross-encoder inputs) are not supported yet",
    "cache_salt": "cache_salt is not supported yet",
}
_PROMPT_KEYS = ("prompt", "prompt_token_ids")


def _check_prompt_keys(prompt: dict) -> None:
    """A prompt dict holds only keys that take effect: ValueError naming any other key."""
    for key in prompt:
        if key in _PROMPT_KEYS:
            continue
        if key in _UNSUPPORTED_PROMPT_KEYS:
            raise ValueError(f"prompt key {key!r}: {_UNSUPPORTED_PROMPT_KEYS[key]}")
        raise ValueError(f"unknown prompt key {key!r}; a prompt dict takes {list(_PROMPT_KEYS)}")


def _truncate_left(ids: list[int], body: list[int], keep: int) -> list[int]:
    """The last `keep` tokens of `ids` = specials + body + specials, keeping the special tokens."""
    for prefix in range(len(ids) - len(body) + 1):
        if ids[prefix:prefix + len(body)] == body:
            suffix = len(ids) - prefix - len(body)
            room = keep - prefix - suffix
            if room <= 0:
                break
            return ids[:prefix] + body[len(body) - room:] + ids[prefix + len(body):]
    return ids[-keep:]


def _eos_token_id(model_config: ModelConfig, tokenizer: Any | None) -> int | None:
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    eos = getattr(model_config.hf_config, "eos_token_id", None)
    if isinstance(eos, list):
        return int(eos[0]) if eos else None
    return int(eos) if eos is not None else None


def _generation_config_eos_ids(model_config: ModelConfig) -> set[int]:
    eos = model_config.generation_config.get("eos_token_id")
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list) else [eos])}
