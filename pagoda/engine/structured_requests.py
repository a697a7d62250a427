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
import concurrent.futures
from dataclasses import dataclass
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
                logger.error("request %s failed: %s", request_id, reason, extra={"request_id": request_id})
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

    def collect(self, scheduler, sched: SchedulerOutput) -> "StepGrammars":
        """What `fill` needs of the step, read from the scheduler (on the engine's thread): then `fill` may run
        on another thread while the engine thread touches none of these grammars."""
        spec_tokens = sched.scheduled_spec_decode_tokens
        live, request_ids, grammars, drafts = [], [], [], []
        row = 0
        for request_id in sched.structured_output_request_ids:
            request_drafts = spec_tokens.get(request_id, ()) if spec_tokens else ()
            num_rows = 1 + len(request_drafts)
            request = scheduler.requests.get(request_id)
            if request is not None and request.grammar is not None and request.reasoning_end is None:
                live.append((row, num_rows))
                request_ids.append(request_id)
                grammars.append(request.grammar)
                drafts.append(list(request_drafts))
            row += num_rows
        return StepGrammars(live, request_ids, grammars, drafts if spec_tokens else None, row,
                            len(sched.structured_output_request_ids))

    def fill(self, step: "StepGrammars", prior: "concurrent.futures.Future[AcceptedStep] | None" = None) -> np.ndarray:
        """The bitmask of what `collect` gathered. `prior`: the previous step's `accept` (done, on this thread),
        whose rows are reused for the requests it filled; the others are filled here."""
        manager = self._get_manager()
        accepted = prior.result() if prior is not None else None
        reuse = accepted is not None and accepted.bitmask is not None and step.drafts is None
        if reuse and len(step.grammars) == step.num_requests and accepted.request_ids == step.request_ids:
            return accepted.bitmask  # the same requests in the same order (the usual decode step)
        if not reuse and len(step.grammars) == step.num_requests:  # all alive (the usual case): no copy
            return manager.fill_bitmask(step.grammars, step.drafts)
        bitmask = np.full((step.num_rows, manager.bitmask_width()), -1, dtype=np.int32)  # every bit set
        todo = list(range(len(step.grammars)))
        if reuse:
            where = accepted.rows
            todo = [i for i, request_id in enumerate(step.request_ids) if request_id not in where]
            done = [i for i, request_id in enumerate(step.request_ids) if request_id in where]
            if done:
                bitmask[[step.live[i][0] for i in done]] = accepted.bitmask[[where[step.request_ids[i]] for i in done]]
        if todo:
            rows = np.concatenate([np.arange(step.live[i][0], step.live[i][0] + step.live[i][1]) for i in todo])
            bitmask[rows] = manager.fill_bitmask([step.grammars[i] for i in todo],
                                                 [step.drafts[i] for i in todo] if step.drafts is not None else None)
        return bitmask

    def accept(self, step: "StepGrammars", sampled_tokens) -> "AcceptedStep":
        """On the grammar thread, for a step without drafts: give each live request of `step` the token it
        sampled (`sampled_tokens()`: request id -> token, waiting for the device), then fill the masks of
        those requests' next tokens, which the next step's `fill` reuses. Never raises: a refused token, or a
        failure here, is in `refused` (request id -> reason), and the engine fails those requests."""
        try:
            tokens = sampled_tokens()
            given = [i for i, request_id in enumerate(step.request_ids) if request_id in tokens]
            grammars = [step.grammars[i] for i in given]
            chosen = [tokens[step.request_ids[i]] for i in given]
            results = type(grammars[0]).accept_batch(grammars, chosen) if grammars else []
            refused, kept = {}, []
            for i, token, ok in zip(given, chosen, results):
                if ok:
                    kept.append(i)
                else:
                    refused[step.request_ids[i]] = f"token {token} is not allowed by the request's grammar"
            request_ids = [step.request_ids[i] for i in kept]
            bitmask = self._get_manager().fill_bitmask([step.grammars[i] for i in kept])
            return AcceptedStep(request_ids, {r: j for j, r in enumerate(request_ids)}, bitmask, refused)
        except Exception as exc:  # noqa: BLE001 - the grammars' states are unknown now: their requests fail
            logger.exception("giving a step's tokens to %d grammars failed", len(step.request_ids))
            reason = f"advancing the request's grammar failed: {type(exc).__name__}: {exc}"
            return AcceptedStep([], {}, None, {request_id: reason for request_id in step.request_ids})


@dataclass
class StepGrammars:
    """The grammar rows of one step, as `collect` read them on the engine thread."""

    live: list[tuple[int, int]]  # (first row, rows) of each request whose grammar applies, in step order
    request_ids: list[str]  # those requests
    grammars: list[Any]  # their RequestGrammars
    drafts: list[list[int]] | None  # their drafts (None: the step verifies none)
    num_rows: int  # rows of the step's bitmask (1 + drafts per structured request, live or not)
    num_requests: int  # structured requests of the step, live or not


@dataclass
class AcceptedStep:
    """A step's tokens given to its grammars (`StructuredRequests.accept`), with the masks that follow."""

    request_ids: list[str]  # the requests whose rows `bitmask` holds, in row order
    rows: dict[str, int]  # request id -> its row
    bitmask: np.ndarray | None  # None: the accept failed
    refused: dict[str, str]  # request id -> why its grammar refused the step's token


def _eos_token_ids(model_config, tokenizer) -> list[int]:
    """The ids that end generation (the Processor's stop ids: EOS and generation_config's): a grammar allows
    them where it can end, and only them after."""
    eos = _eos_token_id(model_config, tokenizer)
    return sorted(_generation_config_eos_ids(model_config) | ({eos} if eos is not None else set()))
