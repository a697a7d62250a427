"""The draft-model proposer: a smaller model with the target's vocabulary drafts k tokens per request.

The draft keeps its own KV cache (worker/worker.py) over the target's blocks and block tables, and it
stays a mirror of the target's cache: every target forward pass is followed by a draft forward over
the same flat batch (same tokens, positions and slots: `catch_up`). So prefix-cache hits, chunked
prefills and preemption (recomputation) hold for the draft exactly as for the target, with no
bookkeeping of its own. After a step, `propose` runs k batched one-token decode steps for the requests
that may speculate: step 0 feeds each request's last token (the one the target just sampled) at its
position, step j its draft j - 1, each writing its KV into the request's lookahead slots (the
scheduler reserves k past the step, core/scheduler.py). Drafts are the draft model's argmax, so the
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
- One host sync per `propose` call (the drafts), none inside the k steps.
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

    def propose(self, rows: np.ndarray) -> list[list[int]]:
        """Up to k drafts for each InputBatch row of `rows` (their tokens are on the host)."""
        if rows.size == 0:
            return []
        runner = self.runner
        batch, device, block_size = runner.batch, runner.device, runner.block_size
        num_tokens = batch.num_tokens[rows]
        capacity = batch.num_blocks[rows] * block_size  # slots allocated: positions < capacity
        # Step j writes position num_tokens - 1 + j and drafts the token at num_tokens + j.
        counts = np.minimum.reduce([np.full(len(rows), self.k), capacity - num_tokens + 1,
                                    self.max_model_len - num_tokens])
        counts = np.maximum(counts, 0)
        drafted: list[torch.Tensor] = []
        active = np.flatnonzero(counts > 0)
        last = to_device(batch.token_ids[rows[active], num_tokens[active] - 1], device)
        for step in range(int(counts.max(initial=0))):
            still = counts[active] > step
            if not still.all():
                keep = np.flatnonzero(still)
                active, last = active[keep], last[to_device(keep, device)]
            if active.size == 0:
                break
            positions = num_tokens[active] - 1 + step
            hidden = self._forward(last, to_device(positions, device), self._decode_metadata(rows[active], positions))
            last = self.model.compute_logits(hidden).argmax(dim=-1)
            drafted.append((active, last))
        drafts: list[list[int]] = [[] for _ in rows]
        for active_rows, ids in drafted:  # one sync per step's ids, all after the last launch
            for i, token in zip(active_rows.tolist(), ids.tolist()):
                drafts[i].append(token)
        return drafts

    def _decode_metadata(self, rows: np.ndarray, positions: np.ndarray):
        runner = self.runner
        batch, device, block_size = runner.batch, runner.device, runner.block_size
        n = len(rows)
        seq_lens = positions + 1
        slots = batch.block_table[rows, positions // block_size].astype(np.int64) * block_size + positions % block_size
        max_blocks = int(-(-seq_lens.max() // block_size))
        query_start = np.arange(n + 1, dtype=np.int32)
        return runner.attn_metadata.build(
            num_reqs=n, num_tokens=n, max_query_len=1, max_seq_len=int(seq_lens.max()),
            query_start_loc=to_device(query_start, device), seq_lens=to_device(seq_lens.astype(np.int32), device),
            block_tables=to_device(batch.block_table[rows, :max_blocks], device), slot_mapping=to_device(slots, device),
            query_start_loc_cpu=query_start.tolist(), seq_lens_cpu=seq_lens.tolist(),
        )
