"""ModelRunner: turns a SchedulerOutput into one forward pass over a flat token batch, then samples.

Invariants:
- The batch is flat: the step's tokens of all scheduled requests, back to back, never padded.
  Request i's tokens are rows query_start_loc[i]:query_start_loc[i+1], in the order of
  SchedulerOutput.num_scheduled_tokens.
- Logits are computed only for rows that sample (a request whose scheduled tokens reach the end
  of its known tokens) and for prompt positions whose prompt_logprobs were asked for.
- Per-request state lives in InputBatch and is updated by the step's diff; the runner appends each
  sampled token to its own copy of the request's tokens, so the scheduler never resends them.
- A seeded request's generator advances only when that request samples, so its tokens do not
  depend on what else is in the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.attention.backend import AttentionMetadata
from pagoda.config import PagodaConfig
from pagoda.core.sched_output import ModelRunnerOutput, PositionLogprobs, SchedulerOutput
from pagoda.sample.logprobs import compute_prompt_logprobs
from pagoda.sample.metadata import SamplingMetadata
from pagoda.sample.sampler import Sampler
from pagoda.sampling_params import SamplingType
from pagoda.worker.input_batch import InputBatch


class ModelRunner:
    def __init__(self, config: PagodaConfig, model: torch.nn.Module, kv_caches: list[torch.Tensor], device: torch.device) -> None:
        self.config = config
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.block_size = config.cache.block_size
        self.vocab_size = config.model.vocab_size
        self.batch = InputBatch(config.scheduler.max_num_seqs, config.model.max_model_len, self.block_size)
        self.sampler = Sampler()
        self.cuda_graphs = None  # a CudaGraphRunner, set by the worker on CUDA unless enforce_eager
        # Seeded requests get their own generator; the rest share torch's default one, which the
        # worker seeds with the engine's `seed` at start-up.
        self.generators: dict[str, torch.Generator] = {}

    # ---- state diff -------------------------------------------------------------------------------
    def _apply_diff(self, sched: SchedulerOutput) -> None:
        for req_id in sched.finished_req_ids | sched.preempted_req_ids:
            self.batch.remove(req_id)
            self.generators.pop(req_id, None)
        for cached in sched.cached_reqs:
            self.batch.update(cached)
        for new in sched.new_reqs:
            self.batch.add(new)
            params = new.sampling_params
            if params.sampling_type == SamplingType.RANDOM_SEED and new.req_id not in self.generators:
                self.generators[new.req_id] = torch.Generator(device=self.device).manual_seed(params.seed)

    # ---- one step ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self._apply_diff(sched)
        if sched.is_empty:
            return ModelRunnerOutput(sampled_token_ids={})
        req_ids = list(sched.num_scheduled_tokens)
        rows = np.array([self.batch.row_of[r] for r in req_ids], dtype=np.int64)
        counts = np.array([sched.num_scheduled_tokens[r] for r in req_ids], dtype=np.int64)
        inputs = self._prepare_inputs(rows, counts)
        hidden = self._forward(inputs["input_ids"], inputs["positions"], inputs["attn_metadata"])

        starts, ends = inputs["starts"], inputs["ends"]
        self.batch.num_computed[rows] = ends
        samples = ends == self.batch.num_tokens[rows]
        output = ModelRunnerOutput(sampled_token_ids={r: [] for r in req_ids})
        prompt_logprobs = self._prompt_logprobs(req_ids, rows, starts, ends, inputs["query_start"], hidden)
        output.prompt_logprobs = prompt_logprobs
        if samples.any():
            self._sample(req_ids, rows, samples, inputs["query_start"] + counts - 1, hidden, output)
        return output

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """The model forward: replayed from a CUDA graph for decode-only steps when graphs exist."""
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(metadata):
            return self.cuda_graphs.run(input_ids, positions, metadata)
        return self.model(input_ids, positions, self.kv_caches, metadata)

    def _prepare_inputs(self, rows: np.ndarray, counts: np.ndarray) -> dict:
        batch, block_size = self.batch, self.block_size
        starts = batch.num_computed[rows]
        ends = starts + counts
        total = int(counts.sum())
        query_start = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=query_start[1:])
        token_rows = np.repeat(rows, counts)
        positions = np.repeat(starts, counts) + (np.arange(total) - np.repeat(query_start[:-1], counts))
        input_ids = batch.token_ids[token_rows, positions]
        block_ids = batch.block_table[token_rows, positions // block_size].astype(np.int64)
        slot_mapping = block_ids * block_size + positions % block_size
        max_blocks = int(-(-ends.max() // block_size))
        device = self.device
        metadata = AttentionMetadata(
            num_reqs=len(rows),
            num_tokens=total,
            max_query_len=int(counts.max()),
            max_seq_len=int(ends.max()),
            query_start_loc=torch.from_numpy(query_start.astype(np.int32)).to(device),
            seq_lens=torch.from_numpy(ends.astype(np.int32)).to(device),
            block_tables=torch.from_numpy(np.ascontiguousarray(batch.block_table[rows, :max_blocks])).to(device),
            slot_mapping=torch.from_numpy(slot_mapping).to(device),
            query_start_loc_cpu=query_start.tolist(),
            seq_lens_cpu=ends.tolist(),
        )
        return {
            "input_ids": torch.from_numpy(input_ids).to(device),
            "positions": torch.from_numpy(positions).to(device),
            "attn_metadata": metadata,
            "starts": starts,
            "ends": ends,
            "query_start": query_start[:-1],
        }

    def _sample(self, req_ids, rows, samples, last_token_index, hidden, output: ModelRunnerOutput) -> None:
        sample_at = np.nonzero(samples)[0]
        logits = self.model.compute_logits(hidden[torch.from_numpy(last_token_index[sample_at]).to(self.device)])
        metadata = self._sampling_metadata(rows[sample_at], [req_ids[i] for i in sample_at])
        result = self.sampler.forward(logits, metadata)
        sampled = result.sampled_token_ids.tolist()
        logprob_lists = None
        if result.logprobs is not None:
            logprob_lists = (result.logprob_token_ids.tolist(), result.logprobs.tolist(), result.sampled_ranks.tolist())
        for j, i in enumerate(sample_at):
            req_id, row = req_ids[i], int(rows[i])
            output.sampled_token_ids[req_id] = [sampled[j]]
            self.batch.append_token(row, sampled[j])
            wanted = self.batch.params[row].logprobs
            if logprob_lists is not None and wanted is not None:
                ids, lps, ranks = logprob_lists
                output.logprobs[req_id] = [(ids[j][: wanted + 1], lps[j][: wanted + 1], ranks[j])]

    def _sampling_metadata(self, rows: np.ndarray, req_ids: list[str]) -> SamplingMetadata:
        batch, device = self.batch, self.device
        params = [batch.params[int(r)] for r in rows]
        temperature = batch.temperature[rows]
        top_p, top_k, min_p = batch.top_p[rows], batch.top_k[rows], batch.min_p[rows]
        generators = {j: self.generators[r] for j, r in enumerate(req_ids) if r in self.generators}
        masks = {}
        for j, (row, p) in enumerate(zip(rows, params)):
            if p.min_tokens and batch.num_output_tokens(int(row)) < p.min_tokens and p.all_stop_token_ids:
                masks[j] = sorted(p.all_stop_token_ids)
        requested = [p.logprobs for p in params if p.logprobs is not None]
        return SamplingMetadata(
            temperature=torch.from_numpy(temperature).to(device),
            top_p=torch.from_numpy(top_p).to(device),
            top_k=torch.from_numpy(top_k).to(device),
            min_p=torch.from_numpy(min_p).to(device),
            all_greedy=bool((temperature == 0).all()),
            all_random=bool((temperature > 0).all()),
            no_top_p=bool((top_p >= 1.0).all()),
            no_top_k=bool((top_k == 0).all()),
            no_min_p=bool((min_p <= 0).all()),
            generators=generators,
            max_num_logprobs=max(requested) if requested else None,
            min_tokens_masks=masks,
        )

    def _prompt_logprobs(self, req_ids, rows, starts, ends, query_start, hidden) -> dict[str, list[PositionLogprobs]]:
        """Logprobs of prompt tokens 1.. given their prefixes, for the positions computed this step."""
        out: dict[str, list[PositionLogprobs]] = {}
        for i, req_id in enumerate(req_ids):
            row = int(rows[i])
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
