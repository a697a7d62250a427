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
"""

from __future__ import annotations

import numpy as np

from pagoda.core.sched_output import CachedRequestData, NewRequestData
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
        self.params: list[SamplingParams | None] = [None] * max_num_reqs
        self.req_ids: list[str | None] = [None] * max_num_reqs
        self.row_of: dict[str, int] = {}
        self._free_rows = list(range(max_num_reqs - 1, -1, -1))  # a stack: lowest row on top

    def add(self, new: NewRequestData) -> int:
        if not self._free_rows:
            raise RuntimeError("input batch is full; the scheduler admitted more than max_num_seqs")
        row = self._free_rows.pop()
        count = len(new.token_ids)
        self.token_ids[row, :count] = new.token_ids
        self.num_tokens[row] = count
        self.num_prompt_tokens[row] = new.num_prompt_tokens
        self.num_computed[row] = new.num_computed_tokens
        self.block_table[row, : len(new.block_ids)] = new.block_ids
        self.num_blocks[row] = len(new.block_ids)
        params = new.sampling_params
        greedy = params.sampling_type == SamplingType.GREEDY
        self.temperature[row] = 0.0 if greedy else params.temperature
        self.top_p[row] = params.top_p
        self.top_k[row] = 0 if params.top_k == -1 else params.top_k
        self.min_p[row] = params.min_p
        self.params[row] = params
        self.req_ids[row] = new.req_id
        self.row_of[new.req_id] = row
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
        self._free_rows.append(row)
        self._free_rows.sort(reverse=True)

    def append_token(self, row: int, token_id: int) -> None:
        self.token_ids[row, self.num_tokens[row]] = token_id
        self.num_tokens[row] += 1

    def num_output_tokens(self, row: int) -> int:
        return int(self.num_tokens[row] - self.num_prompt_tokens[row])
