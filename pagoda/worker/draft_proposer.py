"""The draft-model proposer: a smaller model with the target's vocabulary drafts k tokens per request.

The draft keeps its own KV cache (worker/worker.py) over the target's blocks and block tables, and it
stays a mirror of the target's cache: every target forward pass is followed by a draft forward over
the same flat batch (same tokens, positions and slots: `catch_up`). So prefix-cache hits, chunked
prefills and preemption (recomputation) hold for the draft exactly as for the target, with no
bookkeeping of its own. After a step, `propose` runs k batched one-token decode steps for the requests
that may speculate, on the device (their newest token and its position are device tensors, so under
async scheduling nothing waits for the host): step 0 feeds each request's last token (the one the
target just sampled) at its position, step j its draft j - 1, each writing its KV into the request's
lookahead slots (the scheduler reserves k past the step, core/scheduler.py). Drafts are the draft model's argmax, so the
rejection sampler treats them as deterministic (one-hot q): the output distribution stays the
target's exactly, for greedy and random requests alike.

Invariants:
- The draft's KV at a position is valid wherever the target's is (positions < num_computed); at the
  positions past it, what `propose` wrote is overwritten by the next catch-up before it is read.
- A request gets at most k drafts and never one whose position would need a slot the scheduler did
  not allocate (its block table's capacity) or pass the draft's max_model_len (its own position limit,
  at most the target's). Past that limit the catch-up still runs, with positions clamped to the
  limit: the KV it writes there is garbage that no draft ever reads (the scheduler stops drafting
  for a request past the limit: SpeculativeConfig.max_model_len).
- `propose` never syncs with the host (drafts stay in the runner's `draft_ids`); without async scheduling
  the runner copies them to the host once per step.
- On CUDA the draft's forwards replay its own CUDA graphs (`cuda_graphs`, captured by the worker at
  the target's buckets for q = 1 and q = k + 1) whenever the batch is uniform, as the target's do.
"""

from __future__ import annotations

import numpy as np
import torch

from pagoda.worker.input_batch import to_device


class DraftModelProposer:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], runner, num_speculative_tokens: int,
                 max_model_len: int) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.runner = runner
        self.k = num_speculative_tokens
        self.max_model_len = max_model_len
        self.cuda_graphs = None  # a CudaGraphRunner of the draft model (CUDA, unless enforce_eager)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata) -> torch.Tensor:
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(metadata):
            return self.cuda_graphs.run(input_ids, positions, metadata)
        return self.model(input_ids, positions, self.kv_caches, metadata)

    def catch_up(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata) -> None:
        """The draft's forward over the target's step (writes the draft's KV for the same slots)."""
        if metadata.max_seq_len > self.max_model_len:  # past the draft's positions (see the module docstring)
            positions = positions.clamp(max=self.max_model_len - 1)
        self._forward(input_ids, positions, metadata)

    def num_drafts(self, rows: np.ndarray) -> np.ndarray:
        """How many of a row's drafts are usable (its tokens known on the host): at most k, none past the slots
        the scheduler allocated (step j writes position num_tokens - 1 + j) or the draft's max_model_len."""
        batch, block_size = self.runner.batch, self.runner.block_size
        num_tokens = batch.num_tokens[rows]
        capacity = batch.num_blocks[rows] * block_size
        counts = np.minimum.reduce([np.full(len(rows), self.k), capacity - num_tokens + 1,
                                    self.max_model_len - num_tokens])
        return np.maximum(counts, 0)

    def propose(self, rows: np.ndarray, last: torch.Tensor, position: torch.Tensor, draft_ids: torch.Tensor) -> None:
        """k drafts for each InputBatch row of `rows` into draft_ids[rows], all on the device: step j feeds
        last (the row's newest token, at `position`) or draft j - 1, at position + j. A position without an
        allocated slot (or past the draft's max_model_len) writes no KV and drafts garbage that no step
        verifies (the scheduler caps drafts at the same bounds)."""
        if rows.size == 0:
            return
        runner = self.runner
        batch, device, block_size = runner.batch, runner.device, runner.block_size
        n = len(rows)
        rows_dev = to_device(rows, device)
        max_blocks = int(batch.num_blocks[rows].max())
        block_tables = to_device(batch.block_table[rows, :max_blocks], device)
        capacity = to_device(batch.num_blocks[rows] * block_size, device)
        limit = torch.minimum(capacity, torch.full_like(capacity, self.max_model_len))  # positions < limit
        max_seq_len = int(min(max_blocks * block_size, self.max_model_len))  # a bound on every step's lengths
        query_start = np.arange(n + 1, dtype=np.int32)
        query_start_dev = to_device(query_start, device)
        arange = torch.arange(n, device=device)
        host_lengths = runner.attn_metadata.needs_host_lengths
        for step in range(self.k):
            wanted = position + step
            valid = wanted < limit
            clamped = torch.minimum(wanted, limit - 1)
            slots = block_tables[arange, clamped // block_size].to(torch.int64) * block_size + clamped % block_size
            slots = torch.where(valid, slots, torch.full_like(slots, -1))
            seq_lens = (clamped + 1).to(torch.int32)
            metadata = runner.attn_metadata.build(
                num_reqs=n, num_tokens=n, max_query_len=1, max_seq_len=max_seq_len, query_start_loc=query_start_dev,
                seq_lens=seq_lens, block_tables=block_tables, slot_mapping=slots,
                query_start_loc_cpu=query_start.tolist(),
                seq_lens_cpu=seq_lens.tolist() if host_lengths else [max_seq_len] * n,
            )
            hidden = self._forward(last, clamped, metadata)
            last = self.model.compute_logits(hidden).argmax(dim=-1)
            draft_ids[rows_dev, step] = last
