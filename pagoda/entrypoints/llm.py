"""`LLM`: the offline API, as in vLLM — `LLM(model=...)`, `.generate`, `.chat`, `.beam_search`,
`.embed`, `.encode`, `.score`.

Invariants:
- `generate`/`embed`/`encode` return exactly one output per prompt, in the order the prompts were
  given; `score` one per pair.
- A bad prompt or parameter raises before any request of the call is added, and an exception in
  the middle of a run aborts the call's remaining requests, so the engine is left clean.
- `generate(prompts)` without SamplingParams uses `get_default_sampling_params()`: the model's
  generation_config.json defaults unless the engine was started with generation_config="vllm"/"none".
- Requests from here always run with output_kind FINAL_ONLY (the caller's params are not modified).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Sequence

from tqdm.auto import tqdm

from pagoda.engine.beam_search import BeamSearchOutput, beam_search
from pagoda.engine.gc_control import deferred_full_collections
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine_args import EngineArgs
from pagoda.outputs import (
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        self.engine_args = EngineArgs.from_kwargs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(self.engine_args)
        self._request_counter = itertools.count()
        self.default_sampling_params: dict | None = None

    @classmethod
    def from_engine(cls, engine_args: EngineArgs, engine: LLMEngine) -> "LLM":
        """An LLM over an engine already built from `engine_args` (benchmarks that adjust its config first)."""
        llm = cls.__new__(cls)
        llm.engine_args, llm.llm_engine = engine_args, engine
        llm._request_counter = itertools.count()
        llm.default_sampling_params = None
        return llm

    @property
    def model_config(self):
        return self.llm_engine.config.model

    def get_tokenizer(self) -> Any:
        return self.llm_engine.get_tokenizer()

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the model's generation-config defaults (vLLM's behaviour)."""
        if self.default_sampling_params is None:
            self.default_sampling_params = self.model_config.get_diff_sampling_param()
            if self.default_sampling_params:
                logger.info("default sampling parameters from the model's generation config: %s (start with "
                            "generation_config='vllm' to use Pagoda's own defaults)", self.default_sampling_params)
        if self.default_sampling_params:
            return SamplingParams.from_optional(**self.default_sampling_params)
        return SamplingParams()

    # ---- generation -----------------------------------------------------------------------------
    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        _refuse_lora(lora_request)
        if self.model_config.runner_type != "generate":
            raise ValueError("LLM.generate() needs a generative model; this one runs task='embed' "
                             "(use LLM.embed / LLM.encode / LLM.score)")
        prompt_list = _prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params_list = _params_list(sampling_params, SamplingParams, len(prompt_list), "sampling_params")
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError(f"priority has {len(priority)} entries but there are {len(prompt_list)} prompts")
        return self._run(prompt_list, params_list, list(priority) if priority else None, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        chat_template_kwargs: dict | None = None,
        mm_processor_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """vLLM's `LLM.chat`: OpenAI-style messages (string content or text parts; image parts — image_url with a
        data:/http(s) URL, or image_pil — for a model that takes images) through the chat template (the
        tokenizer's, or `chat_template`), `tools` handed to the template, then generate."""
        from pagoda.entrypoints.openai.chat_utils import CONTENT_FORMATS, normalize_messages, resolve_content_format
        from pagoda.entrypoints.openai.errors import APIError
        from pagoda.model_executor.models.registry import accepts_images
        from pagoda.tokenizer import apply_chat_template, load_chat_template, render_chat_template

        _refuse_lora(lora_request)
        takes_images = accepts_images(self.model_config.architecture)
        if mm_processor_kwargs is not None and not takes_images:
            raise ValueError("mm_processor_kwargs: it takes effect only for a model that takes images")
        if chat_template_content_format not in CONTENT_FORMATS:
            raise ValueError(f"chat_template_content_format={chat_template_content_format!r} is not one of "
                             f"{list(CONTENT_FORMATS)}")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise ValueError("chat needs a tokenizer, but skip_tokenizer_init=True")
        content_format = resolve_content_format(chat_template_content_format,
                                                load_chat_template(tokenizer, chat_template))
        kwargs = dict(chat_template_kwargs or {})
        if tools is not None:
            kwargs["tools"] = tools
        prompts = []
        for conversation in conversations:
            if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
                raise ValueError("messages must be a list of dicts with 'role' and 'content' (or a list of such lists)")
            media = [] if takes_images else None
            try:
                placeholder = self.llm_engine.processor.mm_processor.image_placeholder if takes_images else ""
                conversation = normalize_messages(conversation, content_format, media, placeholder)
            except APIError as exc:
                raise ValueError(exc.message) from None
            if media:
                from pagoda.multimodal.media import load_image_url

                allowed = self.model_config.allowed_local_media_path
                images = [value if not isinstance(value, str) else
                          load_image_url(value, where, allowed_local_media_path=allowed) for value, where in media]
                text = render_chat_template(tokenizer, conversation, chat_template, add_generation_prompt,
                                            continue_final_message, **kwargs)
                prompts.append(self.llm_engine.processor.process_chat_images(text, images, mm_processor_kwargs))
                continue
            ids = apply_chat_template(tokenizer, conversation, chat_template=chat_template,
                                      add_generation_prompt=add_generation_prompt,
                                      continue_final_message=continue_final_message, **kwargs)
            prompts.append({"prompt_token_ids": ids, "prompt": tokenizer.decode(ids)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def beam_search(self, prompts: Any, params: BeamSearchParams, lora_request: Any = None, use_tqdm: bool = False,
                    concurrency_limit: int | None = None) -> list[BeamSearchOutput]:
        """vLLM's beam search: the beam_width best sequences per prompt, best first (see engine/beam_search.py).

        `concurrency_limit`: at most this many prompts are searched at a time (all by default).
        """
        _refuse_lora(lora_request)
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be BeamSearchParams, got {type(params).__name__}")
        if concurrency_limit is not None and (not isinstance(concurrency_limit, int) or concurrency_limit < 1):
            raise ValueError(f"concurrency_limit must be None or an integer >= 1, got {concurrency_limit!r}")
        if self.model_config.runner_type != "generate":
            raise ValueError("LLM.beam_search() needs a generative model; this one runs task='embed'")
        processor = self.llm_engine.processor
        max_len = self.model_config.max_model_len
        prompt_ids = []
        for prompt in _prompt_list(prompts):
            ids = processor.parse_prompt(prompt)[1]
            if not ids or len(ids) >= max_len:
                raise ValueError(f"prompts: a beam search prompt must have 1 to {max_len - 1} tokens "
                                 f"(max_model_len={max_len}), got {len(ids)}")
            prompt_ids.append(ids)
        tokenizer = self.get_tokenizer()

        def generate(step_prompts: list, step_params: SamplingParams) -> list[RequestOutput]:
            return self._run(step_prompts, [step_params] * len(step_prompts), None, False, check_logprobs_limit=False)

        chunk = concurrency_limit or max(len(prompt_ids), 1)
        results: list[BeamSearchOutput] = []
        for start in tqdm(range(0, len(prompt_ids), chunk), desc="Beam search", disable=not use_tqdm):
            results += beam_search(generate, prompt_ids[start:start + chunk], params, processor.stop_token_ids,
                                   max_len, decode=tokenizer.decode if tokenizer is not None else None)
        return results

    # ---- pooling --------------------------------------------------------------------------------
    def encode(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
    ) -> list[PoolingRequestOutput]:
        """One pooled vector per prompt (`.outputs.data`, a float32 tensor)."""
        _refuse_lora(lora_request)
        if self.model_config.runner_type != "pooling":
            raise ValueError("LLM.encode() needs an embedding model; start the LLM with task='embed'")
        prompt_list = _prompt_list(prompts)
        if not prompt_list:
            raise ValueError("prompts must hold at least one prompt, got an empty batch")
        if pooling_params is None:
            pooling_params = PoolingParams()
        params_list = _params_list(pooling_params, PoolingParams, len(prompt_list), "pooling_params")
        if truncate_prompt_tokens is not None:
            params_list = [_with(p, truncate_prompt_tokens=truncate_prompt_tokens) for p in params_list]
        return self._run(prompt_list, params_list, None, use_tqdm)

    def embed(
        self,
        prompts: Any,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        lora_request: Any = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (`.outputs.embedding`, a list of floats)."""
        _refuse_lora(lora_request)
        if self.model_config.runner_type != "pooling":
            raise ValueError("LLM.embed() needs an embedding model; start the LLM with task='embed'")
        outputs = self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm)
        return [EmbeddingRequestOutput.from_base(o) for o in outputs]

    def score(
        self,
        text_1: str | Sequence[str],
        text_2: str | Sequence[str],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | None = None,
        lora_request: Any = None,
    ) -> list[ScoringRequestOutput]:
        """Cosine similarity of the embeddings of text pairs: 1:1, 1:N or N:N (vLLM's pairing rules)."""
        _refuse_lora(lora_request)
        if self.model_config.runner_type != "pooling":
            raise ValueError("LLM.score() needs an embedding model; start the LLM with task='embed'")
        first = [text_1] if isinstance(text_1, (str, dict)) else list(text_1)
        second = [text_2] if isinstance(text_2, (str, dict)) else list(text_2)
        if not first:
            raise ValueError("text_1 must hold at least one text")
        if not second:
            raise ValueError("text_2 must hold at least one text")
        if len(first) > 1 and len(first) != len(second):
            raise ValueError(f"text_1 and text_2 must be 1:1, 1:N or N:N, got {len(first)}:{len(second)}")
        import torch.nn.functional as F

        embedded = self.encode(first + second, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                               use_tqdm=use_tqdm)
        left, right = embedded[: len(first)], embedded[len(first):]
        if len(left) == 1:
            left = left * len(right)
        pad = getattr(self.get_tokenizer(), "pad_token_id", None)
        results = []
        for a, b in zip(left, right):
            score = F.cosine_similarity(a.outputs.data, b.outputs.data, dim=0).item()
            tokens = a.prompt_token_ids + ([pad] if pad is not None else []) + b.prompt_token_ids
            results.append(ScoringRequestOutput(f"{a.request_id}_{b.request_id}", ScoringOutput(score), tokens, True))
        return results

    # ---- the run loop ---------------------------------------------------------------------------
    def _run(self, prompts: list, params: list, priority: list[int] | None, use_tqdm: bool,
             check_logprobs_limit: bool = True) -> list:
        with deferred_full_collections():
            return self._run_requests(prompts, params, priority, use_tqdm, check_logprobs_limit)

    def _run_requests(self, prompts: list, params: list, priority: list[int] | None, use_tqdm: bool,
                      check_logprobs_limit: bool) -> list:
        engine = self.llm_engine
        request_ids = [str(next(self._request_counter)) for _ in prompts]
        params = _final_only(params)
        added: list[str] = []
        finished: dict[str, Any] = {}
        try:
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                engine.add_request(request_ids[i], prompt, sp, priority[i] if priority else 0,
                                   check_logprobs_limit=check_logprobs_limit)
                added.append(request_ids[i])
            bar = tqdm(total=len(prompts), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True)
            output_tokens = 0
            while len(finished) < len(prompts):
                for out in engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        if isinstance(out, RequestOutput):
                            output_tokens += sum(len(c.token_ids) for c in out.outputs)
                        bar.update(1)
                        elapsed = bar.format_dict["elapsed"] or 1e-9
                        bar.set_postfix_str(f"output: {output_tokens / elapsed:.1f} toks/s", refresh=False)
            bar.close()
        except BaseException:
            engine.abort_request([r for r in added if r not in finished])
            raise
        return [finished[r] for r in request_ids]


def _refuse_lora(lora_request: Any) -> None:
    if lora_request is not None:
        raise ValueError("lora_request: LoRA adapters are not supported yet")


def _prompt_list(prompts: Any) -> list:
    return [prompts] if isinstance(prompts, (str, dict)) else list(prompts)


def _params_list(params: Any, kind: type, count: int, name: str) -> list:
    if isinstance(params, kind):
        return [params] * count
    params_list = list(params)
    if len(params_list) != count:
        raise ValueError(f"{name} has {len(params_list)} entries but there are {count} prompts")
    for p in params_list:
        if not isinstance(p, kind):
            raise TypeError(f"{name} entries must be {kind.__name__}, got {type(p).__name__}")
    return params_list


def _with(params: Any, **changes: Any) -> Any:
    """A copy of params with some fields changed (the caller's object is left alone)."""
    copy = params.clone()
    for key, value in changes.items():
        setattr(copy, key, value)
    copy.__post_init__()  # re-validate
    return copy


def _final_only(params: list) -> list:
    """The params with output_kind FINAL_ONLY; one copy per distinct object that needs changing."""
    copies: dict[int, Any] = {}
    result = []
    for p in params:
        if p.output_kind != RequestOutputKind.FINAL_ONLY:
            if id(p) not in copies:
                copies[id(p)] = _with(p, output_kind=RequestOutputKind.FINAL_ONLY)
            p = copies[id(p)]
        result.append(p)
    return result
