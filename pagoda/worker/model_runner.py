"""ModelRunner: turns a SchedulerOutput into one forward pass over a flat token batch, then samples.

Invariants:
- The batch is flat: the step's tokens of all scheduled requests, back to back, in the order of
  SchedulerOutput.num_scheduled_tokens; request i's tokens are rows query_start_loc[i]:query_start_loc[i+1].
  It is padded only for a verify step whose requests carry different numbers of drafts (so that it
  replays the k + 1 CUDA graph, `_graph_query_len`): each request's rows then end in padding tokens,
  which write no KV (slot -1), are never sampled, and never change what the real tokens compute.
- Logits are computed only for rows that sample (a request whose scheduled tokens reach the end
  of its known tokens, plus its drafts under speculative decoding: then at each of its last k + 1
  positions, see worker/spec_decode.py) and for prompt positions whose prompt_logprobs were asked for.
- Per-request state lives in InputBatch and is updated by the step's diff; the runner appends each
  sampled token to its own copy of the request's tokens, so the scheduler never resends them.
- A step returns before its sampled ids reach the host (StepOutput, a handle the engine reads): the
  runner appends a placeholder instead, and the next step takes those tokens from the device tensor
  of the last sampling step. Only the runner fills its placeholders (`_fill_placeholders`), at the
  start of a later step: those of every finished copy, and all of them (waiting) when the step's
  sampling reads token history on the host (penalties, bad words, logits processors). A speculative
  step syncs before it returns (its token counts are only known after verification) and hands over
  a ready output.
- A step with structured-output requests (`sched.structured_output_request_ids`) stops before sampling:
  execute_model returns None after the forward pass, and `sample_tokens(bitmask)` samples it, with the
  grammars' masks applied to the logits of those requests' sampled positions. Nothing else runs between
  the two calls (the engine core calls sample_tokens before the next execute_model).
- A seeded request's generator advances only when that request samples, so its tokens do not
  depend on what else is in the batch.
- A pooling request never samples: in the step that computes its (whole) prompt, the Pooler turns its
  hidden states into one vector in `ModelRunnerOutput.pooler_output`.
- With pipeline parallelism (`self.stage`, worker/pipeline_stage.py) the forward pass runs this stage's layers
  between a receive from the previous stage and a send to the next; only the last stage pools, computes
  prompt logprobs and samples, and the others take its sampled ids (the same bookkeeping follows on every
  stage, so their batches stay equal).
- Request isolation: an exception while adding one request (InputBatch row, static bias, generator)
  or while building or applying its own sampling rules (bad words, min_tokens, user logits
  processors) fails that request only: its row and per-request state are dropped at once, it is named
  in `ModelRunnerOutput.failed` of that step, and it stays in `failed` (left out of every later step
  the scheduler already planned) until the scheduler lists it in `finished_req_ids`; a request given
  cached prefix blocks it was to compute fails with it (worker/failed_requests.py). Any other
  exception fails the step as a whole (the engine core fails the step's requests); the runner's state
  stays valid for the next step because a row is only ever read for requests scheduled again.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.attention.backend import AttentionBackend, AttentionMetadata
from pagoda.config import PagodaConfig
from pagoda.core.sched_output import ModelRunnerOutput, PositionLogprobs, SchedulerOutput
from pagoda.sample.logprobs import compute_prompt_logprobs
from pagoda.sample.sampler import Sampler
from pagoda.sampling_params import SamplingType
from pagoda.attention.cascade import cascade_enabled
from pagoda.worker.cuda_graph import capture_sizes
from pagoda.worker.failed_requests import FailedRequests
from pagoda.worker.grammar_rows import apply_grammar
from pagoda.worker.input_batch import InputBatch, to_device
from pagoda.worker.sampling_inputs import SamplingInputs
from pagoda.worker.step_inputs import graph_query_len, prefill_graph_len, prepare_inputs
from pagoda.worker.step_output import PLACEHOLDER, SampledTokens, StepOutput, VerifiedTokens


class ModelRunner:
    def __init__(self, config: PagodaConfig, model: torch.nn.Module, kv_caches: list[torch.Tensor], device: torch.device,
                 attn_backend: AttentionBackend) -> None:
        self.config = config
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.block_size = config.cache.block_size
        self.vocab_size = config.model.vocab_size
        self.batch = InputBatch(config.scheduler.max_num_seqs, config.model.max_model_len, self.block_size)
        self.sampler = Sampler()
        self.sampling_inputs = SamplingInputs(self.batch, self.vocab_size, device)
        self.pooler = None
        if config.model.runner_type == "pooling":
            from pagoda.model_executor.layers.pooler import Pooler

            self.pooler = Pooler(config.model.pooler_config)
        # Every AttentionMetadata of this runner (eager steps, CUDA-graph capture, warm-up) comes from
        # here; the backend fixes its launch choices (decode split-KV count per CUDA-graph bucket).
        self.attn_metadata = attn_backend.metadata_builder(
            batch_buckets=capture_sizes(config.scheduler.max_num_seqs), max_model_len=config.model.max_model_len,
            num_heads=config.model.hf_text_config.num_attention_heads // config.parallel.tensor_parallel_size,
            num_kv_heads=model.kv_cache_spec.num_kv_heads,
            head_size=model.kv_cache_spec.head_size, device=device,
        )
        self.cuda_graphs = None  # a CudaGraphRunner, set by the worker on CUDA unless enforce_eager
        # Query lengths a non-uniform verify step is padded to (None: the CUDA graphs', when there are any); the
        # tests set it to run the padded path on the CPU.
        self.pad_query_lens: tuple[int, ...] | None = None
        self.pad_prefill_lens: tuple[int, ...] | None = None  # tests: pad lone prefills as for prefill graphs
        # Seeded requests get their own generator; the rest share torch's default one, which the
        # worker seeds with the engine's `seed` at start-up.
        self.generators: dict[str, torch.Generator] = {}
        # The last sampling step, still on its way to the host: its sampled ids (on the device) and the
        # index of each row in them; `unfilled`: sampling steps whose placeholders are still in the batch.
        self.last_sampled: torch.Tensor | None = None
        self.pending_src = np.full(config.scheduler.max_num_seqs, -1, dtype=np.int64)  # row -> index in last_sampled
        self.unfilled: list[SampledTokens] = []
        speculative = getattr(config, "speculative", None)
        self.spec = None  # the speculative-decoding step (worker/spec_decode.py) when configured
        if speculative is not None:
            from pagoda.worker.spec_decode import SpecDecodeStep

            self.spec = SpecDecodeStep(speculative, self)
        # Cascade attention for steps whose requests share their leading blocks (attention/cascade.py): with
        # prefix caching (the only way requests come to share blocks) and without speculative decoding (its
        # verify steps in flight leave the host positions upper bounds). Counted per step that ran it.
        self.cascade = (self.attn_metadata.supports_cascade and cascade_enabled()
                        and not getattr(config, "disable_cascade_attn", False)
                        and config.cache.enable_prefix_caching and self.spec is None)
        self.num_cascade_steps = 0
        self.failed = FailedRequests(self.block_size)  # failed here, not yet in the scheduler's finished_req_ids
        self.mm = None  # worker/mm_inputs.MultiModalInputs for a model that takes images
        if getattr(model, "supports_images", False):
            from pagoda.worker.mm_inputs import MultiModalInputs

            self.mm = MultiModalInputs(model, device, config.model.torch_dtype)
        self.mrope = None  # worker/mrope.MRopePositions for a model with M-RoPE (three position rows)
        if getattr(model, "uses_mrope", False):
            from pagoda.worker.mrope import MRopePositions

            self.mrope = MRopePositions(model, device)
        # A step launched without sampling yet (it has structured-output requests): (the sampling to run,
        # [(request id, bitmask rows)] of its structured_output_request_ids); see sample_tokens().
        self.deferred_sampling = None
        self.stage = None  # this rank's pipeline stage, with pipeline parallelism
        if config.parallel.pipeline_parallel_size > 1:
            from pagoda.worker.pipeline_stage import PipelineStage

            self.stage = PipelineStage(model, config.model.torch_dtype, device)

    # ---- state diff -------------------------------------------------------------------------------
    def _apply_diff(self, sched: SchedulerOutput, output: ModelRunnerOutput) -> None:
        failed = self.failed
        for req_id in sched.finished_req_ids | sched.preempted_req_ids:
            self._drop(req_id)
        cached_reqs, new_reqs = sched.cached_reqs, sched.new_reqs
        if failed:  # requests failed here that the scheduler still schedules (see failed_requests.py)
            failed.forget(sched.finished_req_ids)
            cached_reqs = failed.split_cached(cached_reqs)
            new_reqs = [n for n in new_reqs if n.req_id not in failed]
        for cached in cached_reqs:
            self.batch.update(cached)
        for new in new_reqs:
            owner = failed.shares_unwritten(new) if failed else None
            if owner is not None:
                self.fail(new.req_id, f"request {new.req_id} was given cached prefix blocks that request {owner} "
                          "was to compute, but that request failed first", output, new)
                continue
            try:
                self._add(new)
            except Exception as exc:  # noqa: BLE001 - one bad request fails alone
                self.fail(new.req_id, f"adding request {new.req_id} to the batch failed: {type(exc).__name__}: {exc}",
                          output, new)

    def _add(self, new) -> None:
        if new.mm_inputs:
            if self.mm is None:
                raise ValueError("the request has images but the model does not take them")
            self.mm.add(new.req_id, new.mm_inputs)
        if self.mrope is not None:
            self.mrope.add(new.req_id, new.token_ids, new.num_prompt_tokens, new.mm_inputs)
        self.batch.add(new)
        params = new.sampling_params
        if params is None:
            return  # a pooling request
        self.sampling_inputs.add(new.req_id, params)
        if params.sampling_type == SamplingType.RANDOM_SEED and new.req_id not in self.generators:
            self.generators[new.req_id] = torch.Generator(device=self.device).manual_seed(params.seed)

    def _drop(self, req_id: str) -> None:
        if self.mm is not None:
            self.mm.remove(req_id)
        if self.mrope is not None:
            self.mrope.remove(req_id)
        self.batch.remove(req_id)
        self.generators.pop(req_id, None)
        self.sampling_inputs.remove(req_id)

    def fail(self, req_id: str, reason: str, output: ModelRunnerOutput, new=None) -> None:
        """Fail one request: drop its state now, report it in `output`, skip it until the scheduler drops it.
        `new`: its NewRequestData when it failed on arrival (it may have no row then)."""
        row = self.batch.row_of.get(req_id)
        if new is not None:
            self.failed.add(req_id, new.block_ids, new.num_computed_tokens)
        elif row is not None:
            batch = self.batch
            self.failed.add(req_id, batch.block_table[row, : batch.num_blocks[row]], int(batch.num_computed[row]))
        else:
            self.failed.add(req_id, (), 0)
        self._drop(req_id)
        output.failed[req_id] = reason

    # ---- one step ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> StepOutput:
        output = ModelRunnerOutput(sampled_token_ids={})
        if self.stage is not None and self.stage.pending:
            self._settle(sched, output)
        self._apply_diff(sched, output)
        if sched.is_empty:
            return StepOutput.ready(output)
        req_ids = list(sched.num_scheduled_tokens)
        if self.failed:
            req_ids = [r for r in req_ids if r not in self.failed]
            if not req_ids:
                return StepOutput.ready(output)
        rows = np.array([self.batch.row_of[r] for r in req_ids], dtype=np.int64)
        counts = np.array([sched.num_scheduled_tokens[r] for r in req_ids], dtype=np.int64)
        if self.unfilled:
            # Penalty rows read the newest ids on the device, unless a pipeline stage's ids are on their way.
            self._fill_placeholders(wait=bool(self.batch.needs_history[rows].any()
                                              or (self.stage is not None and self.batch.has_penalty[rows].any())))
        drafts = sched.scheduled_spec_decode_tokens
        num_drafts = self.spec.write_drafts(req_ids, rows, drafts) if drafts else 0
        inputs = self._prepare_inputs(rows, counts)
        embeds = None
        if self.mm is not None and self.mm.images:  # image features at the placeholder positions of this step
            embeds = self.mm.embeddings(req_ids, inputs["starts"], counts, inputs["query_start"], inputs["input_ids"])
        rotary_positions = inputs["positions"]
        if self.mrope is not None:  # M-RoPE rows (or 1-D positions shifted by each request's delta)
            shifted = self.mrope.step_positions(req_ids, inputs["starts"], counts)
            rotary_positions = rotary_positions if shifted is None else shifted
        hidden = self._forward(inputs["input_ids"], rotary_positions, inputs["attn_metadata"], embeds)
        if self.spec is not None:
            self.spec.catch_up(inputs["input_ids"], inputs["positions"], inputs["attn_metadata"])

        starts, ends = inputs["starts"], inputs["ends"]
        self.batch.num_computed[rows] = ends
        done = ends == self.batch.num_tokens[rows] + num_drafts
        pooling = self.batch.is_pooling[rows]
        samples = done & ~pooling
        if hidden is None:  # a pipeline stage before the last: it takes the last stage's sampled ids
            if not samples.any():
                return StepOutput.ready(output)

            def sample(grammar):
                return self._receive_sampled(req_ids, rows, samples, output)
            return self._sample_now_or_later(sched, sample)
        if (done & pooling).any():
            self._pool(req_ids, rows, np.nonzero(done & pooling)[0], inputs["query_start"], counts, hidden, output)
        if pooling.all():
            return StepOutput.ready(output)
        prompt_logprobs = self._prompt_logprobs(req_ids, rows, starts, ends, inputs["query_start"], hidden)
        output.prompt_logprobs = prompt_logprobs
        if not samples.any():
            return StepOutput.ready(output)
        if self.spec is not None:
            num_drafts = num_drafts if drafts else np.zeros(len(req_ids), dtype=np.int64)

            def sample(grammar):
                return self.spec.sample(req_ids, rows, np.nonzero(samples)[0], inputs["query_start"] + counts,
                                        num_drafts, drafts, hidden, inputs["positions"], output,
                                        propose=sched.propose_drafts, grammar=grammar)
        else:
            def sample(grammar):
                return self._sample(req_ids, rows, samples, inputs["query_start"] + counts - 1, hidden, output,
                                    grammar)
        return self._sample_now_or_later(sched, sample)

    def _sample_now_or_later(self, sched: SchedulerOutput, sample) -> StepOutput | None:
        if sched.structured_output_request_ids:  # sample_tokens() runs `sample` with the grammars' bitmask
            spec_tokens = sched.scheduled_spec_decode_tokens
            self.deferred_sampling = (sample, [(r, 1 + len(spec_tokens.get(r, ())))
                                               for r in sched.structured_output_request_ids])
            return None
        return sample(None)

    @torch.inference_mode()
    def sample_tokens(self, bitmask: np.ndarray | None) -> StepOutput:
        """Finish a step whose execute_model returned None (it has structured-output requests): sample
        under `bitmask`, the int32 [rows, ceil(vocab / 32)] token masks of the step's
        structured_output_request_ids (1 + drafts rows each, in that order)."""
        deferred, self.deferred_sampling = self.deferred_sampling, None
        if deferred is None:
            raise RuntimeError("sample_tokens() without a step waiting for its grammar bitmask")
        sample, structured = deferred
        return sample(None if bitmask is None else (structured, bitmask))

    def apply_grammar(self, logits: torch.Tensor, sample_ids: list[str], first_row: np.ndarray, grammar) -> None:
        """Mask `logits` in place with the step's grammar bitmask (worker/grammar_rows.py)."""
        apply_grammar(logits, sample_ids, first_row, grammar, self.device)

    def _fill_placeholders(self, wait: bool) -> None:
        """Write the sampled ids of earlier steps over their placeholders: every step's but the newest (their
        copies have arrived: the engine resolved them before scheduling this step), the newest too with
        `wait`, or on a GPU when its copy happens to have arrived already (the host then needs no device
        gather). On the CPU, where every copy has always arrived, the newest is left to the device path, so
        the tests run what a GPU runs whenever the host is ahead of it."""
        newest = self.unfilled[-1]
        early = self.device.type != "cpu" and newest.is_ready()
        for index, sampled in enumerate(self.unfilled):
            if not sampled.arrived():
                continue  # a pipeline stage's ids still on their way: no request of this step is among them
            if wait or sampled is not newest or early:
                if isinstance(sampled, VerifiedTokens):
                    sampled.fill(self.batch, self.unfilled[index + 1:])
                else:
                    sampled.fill(self.batch)
        self.unfilled = [s for s in self.unfilled if not s.filled]

    def add_in_flight(self, verified: VerifiedTokens) -> None:
        """A speculative step launched under async scheduling: the next step reads its tokens (and corrects its
        positions by its rejected counts) on the device until the copy is filled in."""
        self.unfilled.append(verified)
        self.last_sampled = verified.out.gather(1, (verified.num_new - 1)[:, None])[:, 0]  # each one's newest token
        self.pending_src[verified.rows] = np.arange(len(verified.rows))

    def _pool(self, req_ids, rows, pool_at, query_start, counts, hidden, output: ModelRunnerOutput) -> None:
        """One vector per pooling request of `pool_at`, whose whole prompt is in this step's batch."""
        if self.pooler is None:
            raise RuntimeError("a pooling request reached a runner without a pooler (task is not 'embed')")
        params = [self.batch.pooling_params[int(rows[i])] for i in pool_at]
        vectors = self.pooler(hidden, query_start[pool_at], counts[pool_at], params)
        for i, vector in zip(pool_at, vectors):
            output.pooler_output[req_ids[i]] = vector

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata,
                 inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The model forward: replayed from a CUDA graph for decode-only steps when graphs exist; eager with
        `inputs_embeds` (a step that computes image placeholder positions) or M-RoPE positions [3, T]."""
        if self.stage is not None:  # None on a stage before the last: its outputs went to the next stage
            return self.stage.forward(lambda received: self.model(input_ids, positions, self.kv_caches, metadata,
                                                                  intermediate_tensors=received), input_ids.shape[0])
        if inputs_embeds is not None:
            return self.model(input_ids, positions, self.kv_caches, metadata, inputs_embeds=inputs_embeds)
        if self.cuda_graphs is not None and positions.dim() == 1 and self.cuda_graphs.can_run(metadata):
            return self.cuda_graphs.run(input_ids, positions, metadata)
        return self.model(input_ids, positions, self.kv_caches, metadata)

    # ---- the step's inputs (worker/step_inputs.py) ---------------------------------------------------
    def _graph_query_len(self, rows: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> int | None:
        return graph_query_len(self, rows, starts, counts)

    def _prefill_graph_len(self, rows: np.ndarray, starts: np.ndarray, num_tokens: int, lens) -> int | None:
        return prefill_graph_len(self, rows, starts, num_tokens, lens)

    def _prepare_inputs(self, rows: np.ndarray, counts: np.ndarray) -> dict:
        return prepare_inputs(self, rows, counts)

    def _sample(self, req_ids, rows, samples, last_token_index, hidden, output: ModelRunnerOutput,
                grammar=None) -> StepOutput:
        """Sample on the device; returns before the ids reach the host (see StepOutput)."""
        sample_at = np.nonzero(samples)[0]
        logits = self.model.compute_logits(hidden[to_device(last_token_index[sample_at], self.device)])
        sample_rows, sample_ids = rows[sample_at], [req_ids[i] for i in sample_at]
        self.apply_grammar(logits, sample_ids, np.arange(len(sample_ids)), grammar)
        metadata = self.sampling_inputs.build(sample_rows, sample_ids, self.generators,
                                              newest=(self.last_sampled, self.pending_src))
        result = self.sampler.forward(logits, metadata)
        if self.stage is not None:
            self.stage.share_sampled(result.sampled_token_ids, list(metadata.row_errors))
        positions = self.batch.append_tokens(sample_rows, PLACEHOLDER)
        self.pending_src[sample_rows] = np.arange(len(sample_rows))
        self.last_sampled = result.sampled_token_ids
        logprobs = None
        if result.logprobs is not None:
            logprobs = (result.logprob_token_ids, result.logprobs, result.sampled_ranks)
        sampled = SampledTokens(self.batch, sample_ids, sample_rows, positions, result.sampled_token_ids, logprobs)
        self.unfilled.append(sampled)
        step = StepOutput(output, sampled)
        # Rows whose own sampling rules raised (usually none); failed after SampledTokens is made, so
        # the new row epoch tells its fill() to leave the dropped row alone.
        for j, reason in metadata.row_errors.items():
            self.fail(sample_ids[j], f"sampling request {sample_ids[j]} failed: {reason}", output)
        return step

    def _receive_sampled(self, req_ids, rows, samples, output: ModelRunnerOutput) -> StepOutput:
        """A stage before the last: the last stage's sampled ids, on their way (worker/pipeline_stage.py), with the
        same bookkeeping as `_sample`; the requests that failed there fail here when they arrive (`_settle`)."""
        sample_at = np.nonzero(samples)[0]
        sample_rows, sample_ids = rows[sample_at], [req_ids[i] for i in sample_at]
        positions = self.batch.append_tokens(sample_rows, PLACEHOLDER)
        sampled = self.stage.receive_sampled(self.batch, sample_ids, sample_rows, positions)
        self.pending_src[sample_rows] = np.arange(len(sample_rows))
        self.last_sampled = sampled.device_ids
        self.unfilled.append(sampled)
        return StepOutput(output, sampled)

    def _settle(self, sched: SchedulerOutput, output: ModelRunnerOutput) -> None:
        """A stage before the last, before a step: wait for the sampled ids the step depends on, and fail the
        requests the last stage failed (worker/pipeline_stage.py)."""
        # A new request never needs to wait: a request fails in sampling at the step that computed all its known
        # tokens, so no block it holds that a prefix-cache hit could find is unwritten (failed_requests.py).
        touched = sched.finished_req_ids | sched.preempted_req_ids | sched.num_scheduled_tokens.keys()
        for received in self.stage.settle(lambda received: not touched.isdisjoint(received.req_ids)):
            for j in received.failed_rows():
                req_id, row = received.req_ids[j], received.rows[j]
                if self.batch.row_of.get(req_id) == row and self.batch.epoch[row] == received.epochs[j]:
                    self.fail(req_id, f"sampling request {req_id} failed on the last pipeline stage", output)

    def _prompt_logprobs(self, req_ids, rows, starts, ends, query_start, hidden) -> dict[str, list[PositionLogprobs]]:
        """Logprobs of prompt tokens 1.. given their prefixes, for the positions computed this step."""
        out: dict[str, list[PositionLogprobs]] = {}
        if not self.batch.wants_prompt_logprobs[rows].any():
            return out
        for i, req_id in enumerate(req_ids):
            row = int(rows[i])
            if self.batch.params[row] is None:
                continue  # a pooling request
            k = self.batch.params[row].prompt_logprobs
            num_prompt = int(self.batch.num_prompt_tokens[row])
            if k is None or starts[i] >= num_prompt - 1:
                continue
            # Hidden state at position p scores prompt token p + 1.
            first, last = int(starts[i]), min(int(ends[i]), num_prompt - 1)
            index = torch.arange(first, last, device=self.device) - first + int(query_start[i])
            targets = torch.from_numpy(self.batch.token_ids[row, first + 1 : last + 1]).to(self.device)
            logits = self.model.compute_logits(hidden[index])
            ids, lps, ranks = compute_prompt_logprobs(logits, targets, k)
            out[req_id] = list(zip(ids.tolist(), lps.tolist(), ranks.tolist()))
        return out

