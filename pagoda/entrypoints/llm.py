"""`LLM`: the offline API, as in vLLM — `LLM(model=...)`, `.generate`, `.chat`.

Invariants:
- `generate` returns exactly one RequestOutput per prompt, in the order the prompts were given.
- A bad prompt or parameter raises before any request of the call is added, and an exception in
  the middle of a run aborts the call's remaining requests, so the engine is left clean.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from tqdm.auto import tqdm

from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine_args import EngineArgs
from pagoda.outputs import RequestOutput
from pagoda.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        self.engine_args = EngineArgs.from_kwargs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(self.engine_args)
        self._request_counter = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.get_tokenizer()

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        prompt_list = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise ValueError(
                    f"sampling_params has {len(params_list)} entries but there are {len(prompt_list)} prompts"
                )
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError(f"priority has {len(priority)} entries but there are {len(prompt_list)} prompts")
        return self._run(prompt_list, params_list, list(priority) if priority else None, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        from pagoda.tokenizer import apply_chat_template

        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise ValueError("chat needs a tokenizer, but skip_tokenizer_init=True")
        prompts = []
        for conversation in conversations:
            ids = apply_chat_template(
                tokenizer,
                conversation,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **(chat_template_kwargs or {}),
            )
            prompts.append({"prompt_token_ids": ids, "prompt": tokenizer.decode(ids)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, prompts: list, params: list[SamplingParams], priority: list[int] | None, use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        request_ids = [str(next(self._request_counter)) for _ in prompts]
        added: list[str] = []
        finished: dict[str, RequestOutput] = {}
        try:
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                engine.add_request(request_ids[i], prompt, sp, priority[i] if priority else 0)
                added.append(request_ids[i])
            bar = tqdm(total=len(prompts), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True)
            output_tokens = 0
            while len(finished) < len(prompts):
                for out in engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        output_tokens += sum(len(c.token_ids) for c in out.outputs)
                        bar.update(1)
                        elapsed = bar.format_dict["elapsed"] or 1e-9
                        bar.set_postfix_str(f"output: {output_tokens / elapsed:.1f} toks/s", refresh=False)
            bar.close()
        except BaseException:
            engine.abort_request([r for r in added if r not in finished])
            raise
        return [finished[r] for r in request_ids]
