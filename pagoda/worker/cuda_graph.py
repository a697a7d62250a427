"""CUDA graphs for decode steps: capture the model forward once per bucketed batch size, replay it.

A decode-only step (every request has exactly one new token) of n requests runs the graph of the
smallest captured size >= n; rows past n are padding (slot -1: the KV write skips them; sequence
length 1 over block 0: harmless reads) and their outputs are dropped.

Invariants:
- Graphs read only the static buffers below; `run` copies a step's inputs into them, replays, and
  returns a view of the graph's output rows [0, n).
- Sizes are captured largest first in one shared memory pool, after an eager warm-up at the same
  size (which also compiles the Triton kernels outside the capture).
- A graph's attention metadata comes from the runner's AttentionMetadataBuilder (attention/backend.py),
  the same builder eager decode steps use, so its split-KV count for size s is the one an eager decode
  of any batch in bucket s gets, and graphs on and off give bitwise-identical results; kernels read
  real lengths from the buffers, so results are exact for any length.
"""

from __future__ import annotations

import logging
import time

import torch

from pagoda.attention.backend import AttentionMetadata, AttentionMetadataBuilder

logger = logging.getLogger(__name__)


def capture_sizes(max_size: int) -> list[int]:
    """1, 2, 4, every multiple of 8 up to 256, then of 16 (vLLM's buckets), and max_size; ascending.
    Padding a batch to its bucket wastes at most 16 rows (< 6 % above 256)."""
    sizes = [s for s in (1, 2, 4) if s <= max_size]
    sizes += list(range(8, min(max_size, 256) + 1, 8)) + list(range(272, max_size + 1, 16))
    if sizes[-1] != max_size:
        sizes.append(max_size)
    return sizes


class CudaGraphRunner:
    def __init__(self, model, kv_caches, max_capture_size: int, max_model_len: int, block_size: int, device,
                 attn_metadata: AttentionMetadataBuilder) -> None:
        self.model = model
        self.attn_metadata = attn_metadata  # the runner's builder: the backend's launch choices, as eager
        self.kv_caches = kv_caches
        self.sizes = capture_sizes(max_capture_size)
        self.max_model_len = max_model_len
        max_bs = self.sizes[-1]
        max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(max_bs, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_bs, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_bs,), -1, dtype=torch.long, device=device)
        self.query_start_loc = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(max_bs, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_bs, max_blocks, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _metadata(self, size: int) -> AttentionMetadata:
        return self.attn_metadata.build(
            num_reqs=size,
            num_tokens=size,
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[:size],
            query_start_loc_cpu=list(range(size + 1)),
            seq_lens_cpu=[1] * size,
        )

    def _forward(self, size: int) -> torch.Tensor:
        return self.model(self.input_ids[:size], self.positions[:size], self.kv_caches, self._metadata(size))

    @torch.inference_mode()
    def capture(self) -> None:
        started = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):
            self._forward(size)  # warm-up: compiles kernels, settles allocator state
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            pool = graph.pool() if pool is None else pool
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs (decode batch sizes 1..%d) in %.1f s",
                    len(self.sizes), self.sizes[-1], time.perf_counter() - started)

    def can_run(self, metadata: AttentionMetadata) -> bool:
        return metadata.max_query_len == 1 and metadata.num_tokens == metadata.num_reqs and metadata.num_reqs <= self.sizes[-1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        n = metadata.num_reqs
        size = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(metadata.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        self.seq_lens[:n].copy_(metadata.seq_lens)
        self.seq_lens[n:size].fill_(1)
        width = metadata.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(metadata.block_tables)
        self.graphs[size].replay()
        return self.outputs[size][:n]
