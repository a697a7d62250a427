"""Structured-output requests in the engine core: their grammars on the way in, their bitmask each step.

A request whose SamplingParams carry `structured_outputs` gets a grammar from the
StructuredOutputManager (pagoda/structured_output/), which compiles it in the background (compiled
grammars are cached and shared). The request waits here, parked, until its grammar is ready; then it
enters the scheduler with `Request.grammar` set, and the scheduler feeds that grammar every token the
request gains (core/scheduler.py).

Invariants:
- A structured request is in exactly one place: parked here (compiling) or in the scheduler. Parked
  requests count as unfinished and can be aborted; none is ever dropped: a grammar that fails to compile
  fails its request with finish_reason "error" and the compiler's reason.
- The manager (and the tokenizer it needs) is built on the first structured request, so an engine that
  never sees one never imports a grammar library.
- `bitmask(sched)` is built after every earlier step's tokens reached the grammars (the engine core
  resolves the step in flight first), so row r of a request is the mask for its next token given all of
  its output so far; a request that finished meanwhile gets rows that allow every token (its tokens are
  dropped anyway), and so does one still inside its reasoning (config reasoning_parser / reasoning_markers,
  unless enable_in_reasoning): its grammar starts after the end-of-reasoning token.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pagoda.config import PagodaConfig
from pagoda.core.request import EngineCoreRequest
from pagoda.core.sched_output import EngineCoreOutput, SchedulerOutput
from pagoda.engine.processor import _eos_token_id, _generation_config_eos_ids

logger = logging.getLogger(__name__)

_WAIT_S = 0.05  # how long an otherwise idle engine waits for a grammar before looking at its inputs again


class StructuredRequests:
    def __init__(self, config: PagodaConfig) -> None:
        self.config = config
        self.manager = None  # a StructuredOutputManager, built on first use
        self.parked: dict[str, tuple[EngineCoreRequest, Any]] = {}  # request id -> (request, its RequestGrammar)
        self._markers: tuple[int, int] | None | bool = False  # reasoning marker ids (False: not looked up yet)

    def _get_manager(self):
        if self.manager is None:
            from pagoda.structured_output import StructuredOutputManager
            from pagoda.tokenizer import get_tokenizer

            model = self.config.model
            if model.skip_tokenizer_init:
                raise ValueError("structured output needs the tokenizer, but skip_tokenizer_init=True")
            tokenizer = get_tokenizer(model.tokenizer_path, tokenizer_mode=model.tokenizer_mode,
                                      trust_remote_code=model.trust_remote_code, revision=model.revision)
            self.manager = StructuredOutputManager(self.config.structured_outputs, tokenizer,
                                                   model.vocab_size, _eos_token_ids(model, tokenizer))
        return self.manager

    def park(self, request: EngineCoreRequest) -> bool:
        """Start compiling a structured request's grammar and keep the request until it is ready;
        False (nothing done) for a request without structured output."""
        params = request.sampling_params
        if params is None or params.structured_outputs is None:
            return False
        grammar = self._get_manager().add_request(request.request_id, params.structured_outputs)
        self.parked[request.request_id] = (request, grammar)
        return True

    def admit(self, scheduler, wait: bool = False) -> list[EngineCoreOutput]:
        """Move every request whose grammar is ready into the scheduler; error outputs for those whose
        grammar failed. `wait`: the engine has nothing else to do, so block briefly for one."""
        if not self.parked:
            return []
        if wait and not any(grammar.is_ready() for _, grammar in self.parked.values()):
            _, first = next(iter(self.parked.values()))
            first.wait(_WAIT_S)
        outputs: list[EngineCoreOutput] = []
        for request_id, (request, grammar) in list(self.parked.items()):
            if not grammar.is_ready():
                continue
            del self.parked[request_id]
            if grammar.error is not None:
                reason = f"compiling the structured output of request {request_id} failed: {grammar.error}"
                logger.error("request %s failed: %s", request_id, reason)
                outputs.append(EngineCoreOutput(request_id, [], finish_reason="error", error=reason))
                continue
            try:
                reasoning_end = self._reasoning_end(request.prompt_token_ids)
            except ValueError as exc:
                outputs.append(EngineCoreOutput(request_id, [], finish_reason="error", error=str(exc)))
                continue
            scheduler.add_request(request)
            added = scheduler.requests[request_id]
            added.grammar, added.reasoning_end = grammar, reasoning_end
        return outputs

    def _reasoning_end(self, prompt_token_ids: list[int]) -> int | None:
        """The end-of-reasoning id a new request must sample before its grammar applies, or None (no reasoning
        parser, enable_in_reasoning, or the prompt already closed the reasoning: the last marker in it decides;
        with none, the output starts inside the reasoning, as vLLM's deepseek_r1 and qwen3 parsers decide)."""
        markers = self._reasoning_markers()
        if markers is None:
            return None
        start, end = markers
        for token in reversed(prompt_token_ids):
            if token == end:
                return None
            if token == start:
                break
        return end

    def _reasoning_markers(self) -> tuple[int, int] | None:
        """(start id, end id) of the reasoning markers, when grammars wait for the end of reasoning."""
        if self._markers is False:
            config = self.config.structured_outputs
            self._markers = None
            if config.reasoning_markers is not None and not config.enable_in_reasoning:
                tokenizer = self._get_manager().tokenizer
                ids = []
                for marker in config.reasoning_markers:
                    encoded = tokenizer.encode(marker, add_special_tokens=False)
                    if len(encoded) != 1:
                        raise ValueError(f"structured output waits for the reasoning marker {marker!r}, but the "
                                         f"tokenizer makes it {len(encoded)} tokens, not one; set "
                                         "enable_in_reasoning to constrain the reasoning too")
                    ids.append(encoded[0])
                self._markers = (ids[0], ids[1])
        return self._markers

    def abort(self, request_ids: list[str]) -> list[str]:
        """Drop parked requests among `request_ids`; returns those that were parked."""
        return [request_id for request_id in request_ids if self.parked.pop(request_id, None) is not None]

    def bitmask(self, scheduler, sched: SchedulerOutput) -> np.ndarray:
        """The int32 token masks of the step's structured requests (1 + drafts rows each, in order)."""
        return self.fill(self.collect(scheduler, sched))

    def collect(self, scheduler, sched: SchedulerOutput) -> tuple:
        """What `fill` needs of the step, read from the scheduler (on the engine's thread): then `fill` may run
        on another thread while the engine thread touches none of these grammars."""
        spec_tokens = sched.scheduled_spec_decode_tokens
        live, grammars, drafts = [], [], []  # live: (first row, rows) of each request whose grammar applies
        row = 0
        for request_id in sched.structured_output_request_ids:
            request_drafts = spec_tokens.get(request_id, ()) if spec_tokens else ()
            num_rows = 1 + len(request_drafts)
            request = scheduler.requests.get(request_id)
            if request is not None and request.grammar is not None and request.reasoning_end is None:
                live.append((row, num_rows))
                grammars.append(request.grammar)
                drafts.append(list(request_drafts))
            row += num_rows
        return live, grammars, drafts if spec_tokens else None, row, len(sched.structured_output_request_ids)

    def fill(self, collected: tuple) -> np.ndarray:
        """The bitmask of what `collect` gathered."""
        live, grammars, drafts, row, num_requests = collected
        manager = self._get_manager()
        if len(grammars) == num_requests:  # all alive (the usual case): no copy
            return manager.fill_bitmask(grammars, drafts)
        bitmask = np.full((row, manager.bitmask_width()), -1, dtype=np.int32)  # every bit set: all allowed
        if grammars:
            rows = np.concatenate([np.arange(first, first + count) for first, count in live])
            bitmask[rows] = manager.fill_bitmask(grammars, drafts)
        return bitmask


def _eos_token_ids(model_config, tokenizer) -> list[int]:
    """The ids that end generation (the Processor's stop ids: EOS and generation_config's): a grammar allows
    them where it can end, and only them after."""
    eos = _eos_token_id(model_config, tokenizer)
    return sorted(_generation_config_eos_ids(model_config) | ({eos} if eos is not None else set()))
