"""LLMEngine: the in-process engine behind `LLM` — frontend pieces wrapped around an EngineCore.

Invariants:
- Every request added ends in exactly one finished RequestOutput from `step()` (finish_reason
  stop/length, or "error" for a completion the engine failed on its own, with
  `CompletionOutput.error` saying why), or is aborted by `abort_request` — none is lost. A failed
  pooling request raises RuntimeError from `step()` naming it (it has no vector to return).
- A user request id maps to best_of (default n) engine requests (parallel sampling); child i of a
  seeded request samples with seed + i, as vLLM does. best_of > n children always carry their
  sampled tokens' logprobs, so the n best can be chosen by cumulative logprob.
- A PoolingParams request is one engine request and ends in one PoolingRequestOutput.
"""

from __future__ import annotations

import logging
from typing import Any

from pagoda.config import PagodaConfig
from pagoda.engine.core import EngineCore
from pagoda.engine.output_processor import OutputProcessor
from pagoda.engine.processor import Processor
from pagoda.engine_args import EngineArgs
from pagoda.outputs import PoolingRequestOutput, RequestOutput
from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: PagodaConfig, core: Any | None = None) -> None:
        self.config = config
        self.tokenizer = _load_tokenizer(config)
        self.processor = Processor(config.model, self.tokenizer, config.scheduler.policy, config.structured_outputs)
        self.output_processor = OutputProcessor(self.tokenizer)
        # `core`: an object with EngineCore's add_request/abort_requests living elsewhere (the
        # server's engine-core process, see engine/async_llm.py); in-process EngineCore otherwise.
        self.core = core if core is not None else EngineCore(config)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args.create_config())

    def add_request(self, request_id: str, prompt: Any, params: SamplingParams | PoolingParams, priority: int = 0,
                    *, check_logprobs_limit: bool = True) -> None:
        if not isinstance(params, (SamplingParams, PoolingParams)):
            raise TypeError(f"params must be SamplingParams or PoolingParams, got {type(params).__name__}")
        prompt_text, prompt_ids, images = self.processor.parse_prompt_and_images(prompt, params.truncate_prompt_tokens)
        # Validate every child before registering any, so a bad request leaves no trace.
        core_requests = []
        if isinstance(params, PoolingParams):
            core_requests.append(self.processor.process("", prompt_ids, params, priority))
        for index in range(params.num_sequences if isinstance(params, SamplingParams) else 0):
            child_params = params
            if params.num_sequences > 1:
                child_params = params.clone()
                child_params.n, child_params.best_of = 1, None
                child_params.output_kind = RequestOutputKind.CUMULATIVE
                if params.seed is not None:
                    child_params.seed = params.seed + index
                if params.num_sequences > params.n and child_params.logprobs is None:
                    child_params.logprobs = 0  # the sampled token's logprob, to rank the sequences
            core_requests.append(self.processor.process("", prompt_ids, child_params, priority,
                                                        check_logprobs_limit=check_logprobs_limit, mm_inputs=images))
        child_ids = self.output_processor.add_request(request_id, prompt_text, prompt_ids, params)
        for child_id, core_request in zip(child_ids, core_requests):
            core_request.request_id = child_id
            self.core.add_request(core_request)

    def abort_request(self, request_ids: str | list[str]) -> None:
        for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
            self.core.abort_requests(self.output_processor.abort_request(request_id))

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished()

    def get_num_unfinished_requests(self) -> int:
        """User requests (not n/best_of children) that have not finished, as vLLM's LLMEngine counts them."""
        return len(self.output_processor.parents) + len(self.output_processor.pooling)

    def step(self) -> list[RequestOutput | PoolingRequestOutput]:
        outputs, to_abort = self.output_processor.process_outputs(self.core.step())
        if to_abort:
            self.core.abort_requests(to_abort)
        if self.output_processor.failed:
            self._handle_failed()
        return outputs

    def _handle_failed(self) -> None:
        failed = self.output_processor.take_failed()
        running = [f.child_id for f in failed if f.running_in_core]
        if running:  # failed while post-processing here: the core still runs them
            self.core.abort_requests(running)
        for f in failed:
            if f.pooling:
                raise RuntimeError(f"embedding request {f.request_id} failed: {f.reason}")

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def shutdown(self) -> None:
        """Stop the engine core's worker processes (tensor parallelism); the engine runs no step after it."""
        shutdown = getattr(self.core, "shutdown", None)
        if isinstance(self.core, EngineCore) and shutdown is not None:
            shutdown()

    def stats(self) -> dict:
        return self.core.scheduler.stats()


def _load_tokenizer(config: PagodaConfig) -> Any | None:
    if config.model.skip_tokenizer_init:
        return None
    from pagoda.tokenizer import get_tokenizer

    return get_tokenizer(
        config.model.tokenizer_path,
        tokenizer_mode=config.model.tokenizer_mode,
        trust_remote_code=config.model.trust_remote_code,
        revision=config.model.revision,
    )
