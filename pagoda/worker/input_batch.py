"""The model runner's persistent per-request state, kept across steps and updated by diffs.

Each running request owns one row of fixed-size host arrays (token ids, block table, sampling
settings). A step adds rows for new requests, appends block ids and sampled tokens to existing
rows, and frees rows of finished or preempted requests; nothing is rebuilt from scratch.

Invariants:
- `row_of[req_id]` is the row of every request the runner knows; `req_ids[row]` is its inverse
  (None for a free row). Free rows are reused lowest-first.
- For a request in row r: token_ids[r, :num_tokens[r]] are all its known tokens (prompt then
  outputs), block_table[r, :num_blocks[r]] its blocks in position order, and
  num_computed[r] <= num_tokens[r].
- A pooling request's row has `is_pooling[r]` set, `params[r]` None and `pooling_params[r]` set;
  its sampling settings are neutral and never read.
- A row is owned (`row_of`, `req_ids`) from the start of `add()`: if filling it raises, `remove()`
  returns it to the free rows.
- `epoch[r]` changes whenever row r changes hands, so (row, epoch) names one request's tenure of a
  row; per-row flags (`needs_history`, `has_row_rules`, `wants_prompt_logprobs`, `can_speculate`) let a
  step test a whole batch with numpy instead of looping over its requests.
- Under speculative decoding, token_ids[r, num_tokens[r]:] may hold the drafts of the step being
  verified (worker/spec_decode.py); they are never counted in num_tokens[r].
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.core.sched_output import CachedRequestData, NewRequestData
from pagoda.pooling_params import PoolingParams
from pagoda.sampling_params import SamplingParams, SamplingType


class InputBatch:
    def __init__(self, max_num_reqs: int, max_model_len: int, block_size: int) -> None:
        self.max_num_reqs = max_num_reqs
        max_blocks = -(-max_model_len // block_size)
        self.token_ids = np.zeros((max_num_reqs, max_model_len), dtype=np.int64)
        self.num_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_prompt_tokens = np.zeros(max_num_reqs, dtype=np.int64)
        self.num_computed = np.zeros(max_num_reqs, dtype=np.int64)
        self.block_table = np.zeros((max_num_reqs, max_blocks), dtype=np.int32)
        self.num_blocks = np.zeros(max_num_reqs, dtype=np.int64)
        # Sampling settings per row (top_k 0 = off).
        self.temperature = np.zeros(max_num_reqs, dtype=np.float32)
        self.top_p = np.ones(max_num_reqs, dtype=np.float32)
        self.top_k = np.zeros(max_num_reqs, dtype=np.int64)
        self.min_p = np.zeros(max_num_reqs, dtype=np.float32)
        # Penalties per row (neutral: 0, 0, 1); `has_penalty` marks rows that use any.
        self.presence_penalty = np.zeros(max_num_reqs, dtype=np.float32)
        self.frequency_penalty = np.zeros(max_num_reqs, dtype=np.float32)
        self.repetition_penalty = np.ones(max_num_reqs, dtype=np.float32)
        self.has_penalty = np.zeros(max_num_reqs, dtype=bool)
        self.is_pooling = np.zeros(max_num_reqs, dtype=bool)
        # Rows whose sampling reads earlier tokens on the host (bad words, logits processors): a step waits for
        # the step in flight's ids. Penalty rows read theirs on the device (sampling_inputs.py).
        self.needs_history = np.zeros(max_num_reqs, dtype=bool)
        # Rows with per-row sampling rules built on the host each step (min_tokens, bad words, processors).
        self.has_row_rules = np.zeros(max_num_reqs, dtype=bool)
        self.wants_prompt_logprobs = np.zeros(max_num_reqs, dtype=bool)
        # Rows whose sampling does not depend on the position inside a run of drafts (speculative decoding).
        self.can_speculate = np.zeros(max_num_reqs, dtype=bool)
        self.num_logprobs = np.full(max_num_reqs, -1, dtype=np.int64)  # SamplingParams.logprobs, -1 for None
        self.epoch = np.zeros(max_num_reqs, dtype=np.int64)
        self.params: list[SamplingParams | None] = [None] * max_num_reqs
        self.pooling_params: list[PoolingParams | None] = [None] * max_num_reqs
        self.req_ids: list[str | None] = [None] * max_num_reqs
        self.row_of: dict[str, int] = {}
        self._free_rows = list(range(max_num_reqs - 1, -1, -1))  # a stack: lowest row on top

    def add(self, new: NewRequestData) -> int:
        if not self._free_rows:
            raise RuntimeError("input batch is full; the scheduler admitted more than max_num_seqs")
        row = self._free_rows.pop()
        # The row belongs to the request before anything is written, so a failure below (a bad request)
        # leaves a row that remove() gives back, never a lost one.
        self.req_ids[row] = new.req_id
        self.row_of[new.req_id] = row
        self.epoch[row] += 1
        count = len(new.token_ids)
        self.token_ids[row, :count] = new.token_ids
        self.num_tokens[row] = count
        self.num_prompt_tokens[row] = new.num_prompt_tokens
        self.num_computed[row] = new.num_computed_tokens
        self.block_table[row, : len(new.block_ids)] = new.block_ids
        self.num_blocks[row] = len(new.block_ids)
        params = new.sampling_params
        self.params[row] = params
        self.pooling_params[row] = new.pooling_params
        self.is_pooling[row] = params is None
        if params is None:
            params = _NEUTRAL
        greedy = params.sampling_type == SamplingType.GREEDY
        self.temperature[row] = 0.0 if greedy else params.temperature
        self.top_p[row] = params.top_p
        self.top_k[row] = 0 if params.top_k == -1 else params.top_k
        self.min_p[row] = params.min_p
        self.presence_penalty[row] = params.presence_penalty
        self.frequency_penalty[row] = params.frequency_penalty
        self.repetition_penalty[row] = params.repetition_penalty
        self.has_penalty[row] = params.has_penalties
        rules = bool(params.min_tokens or params.bad_words_token_ids or params.logits_processors)
        self.has_row_rules[row] = rules
        self.needs_history[row] = bool(params.bad_words_token_ids or params.logits_processors)
        self.wants_prompt_logprobs[row] = params.prompt_logprobs is not None
        self.num_logprobs[row] = -1 if params.logprobs is None else params.logprobs
        self.can_speculate[row] = not (self.is_pooling[row] or rules or self.needs_history[row] or params.has_penalties
                                       or params.logit_bias or params.allowed_token_ids is not None)
        return row

    def update(self, cached: CachedRequestData) -> None:
        row = self.row_of[cached.req_id]
        start = self.num_blocks[row]
        self.block_table[row, start : start + len(cached.new_block_ids)] = cached.new_block_ids
        self.num_blocks[row] = start + len(cached.new_block_ids)

    def remove(self, req_id: str) -> None:
        row = self.row_of.pop(req_id, None)
        if row is None:
            return
        self.req_ids[row] = None
        self.params[row] = None
        self.pooling_params[row] = None
        self.is_pooling[row] = False
        self.has_penalty[row] = False
        self.needs_history[row] = self.has_row_rules[row] = self.wants_prompt_logprobs[row] = False
        self.can_speculate[row] = False
        self.num_logprobs[row] = -1
        self.epoch[row] += 1
        self._free_rows.append(row)
        self._free_rows.sort(reverse=True)

    def append_tokens(self, rows: np.ndarray, token_id: int) -> np.ndarray:
        """Append `token_id` to each of `rows` (distinct); returns the positions written."""
        positions = self.num_tokens[rows]
        self.token_ids[rows, positions] = token_id
        self.num_tokens[rows] = positions + 1
        return positions

    def num_output_tokens(self, row: int) -> int:
        return int(self.num_tokens[row] - self.num_prompt_tokens[row])

    def prompt_ids(self, row: int) -> list[int]:
        return self.token_ids[row, : self.num_prompt_tokens[row]].tolist()

    def output_ids(self, row: int) -> list[int]:
        return self.token_ids[row, self.num_prompt_tokens[row] : self.num_tokens[row]].tolist()


_NEUTRAL = SamplingParams(temperature=0.0)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a device tensor without making the host wait for the device.

    A copy from pageable memory blocks the host until the GPU has finished everything queued
    before it, which would undo async scheduling; so on CUDA the array goes through pinned memory
    (torch's caching host allocator keeps it alive until the copy has run) with non_blocking=True.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
