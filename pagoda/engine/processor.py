"""Processor: turns a user's prompt and SamplingParams into a validated EngineCoreRequest.

Invariants:
- Everything a user can get wrong is checked here, before the engine core sees the request, and
  raises ValueError naming the field and the allowed values.
- The SamplingParams inside an EngineCoreRequest are the engine's own copy: `all_stop_token_ids`
  holds EOS (unless ignore_eos) and the model's generation-config EOS ids plus stop_token_ids.
"""

from __future__ import annotations

import time
from typing import Any

from pagoda.config import ModelConfig
from pagoda.core.request import EngineCoreRequest
from pagoda.sampling_params import SamplingParams


class Processor:
    def __init__(self, model_config: ModelConfig, tokenizer: Any | None) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.eos_token_id = _eos_token_id(model_config, tokenizer)
        self.extra_eos_ids = _generation_config_eos_ids(model_config)

    def parse_prompt(self, prompt: Any) -> tuple[str | None, list[int]]:
        """(prompt text or None, prompt token ids) for every accepted prompt shape."""
        if isinstance(prompt, str):
            return prompt, self._encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
                    raise ValueError("prompt_token_ids must be a list of integers")
                return prompt.get("prompt"), list(ids)
            if "prompt" in prompt and isinstance(prompt["prompt"], str):
                return prompt["prompt"], self._encode(prompt["prompt"])
        raise ValueError(
            "prompt must be a str, {'prompt': str} or {'prompt_token_ids': [int, ...]}, "
            f"got {type(prompt).__name__}"
        )

    def _encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("prompt text needs a tokenizer, but skip_tokenizer_init=True; pass prompt_token_ids")
        return self.tokenizer.encode(text, add_special_tokens=True)

    def process(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> EngineCoreRequest:
        self._validate(prompt_token_ids, params)
        params = params.clone()
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.extra_eos_ids
            if self.eos_token_id is not None:
                stop_ids.add(self.eos_token_id)
        params.all_stop_token_ids = stop_ids
        return EngineCoreRequest(
            request_id=request_id,
            prompt_token_ids=list(prompt_token_ids),
            sampling_params=params,
            eos_token_id=self.eos_token_id,
            arrival_time=arrival_time if arrival_time is not None else time.time(),
            priority=priority,
        )

    def _validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        max_logprobs, max_len = self.model_config.max_logprobs, self.model_config.max_model_len
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > max_logprobs:
                raise ValueError(f"{name}={value} is more than max_logprobs={max_logprobs} (an engine argument)")
        if not prompt_token_ids:
            raise ValueError("prompt is empty; it must have at least one token")
        if len(prompt_token_ids) >= max_len:
            raise ValueError(
                f"prompt is {len(prompt_token_ids)} tokens long; with max_model_len={max_len} it must be "
                f"at most {max_len - 1} tokens so that at least one token can be generated"
            )
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt_token_ids contains ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, but skip_tokenizer_init=True")
        if params.prompt_logprobs is not None and len(prompt_token_ids) < 1:
            raise ValueError("prompt_logprobs needs a non-empty prompt")


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
