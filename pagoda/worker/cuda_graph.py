"""CUDA graphs for decode, verify and single-request prefill steps: capture the model forward once per
bucketed batch size and query length, replay it.

A uniform step (every request has exactly q new tokens: q = 1 for decode, q = k + 1 for a speculative
verify step whose requests all carry k drafts) of n requests runs the graph of q and the smallest
captured size >= n; requests past n are padding (slots -1: the KV write skips them; sequence length q
over block 0: harmless reads) and their outputs are dropped. Verify graphs exist only with speculative
decoding (`verify_query_len`).

A step of ONE request computing q tokens (a prompt, or a chunk of one: the time to first token of a lone
request, where an eager forward is bound by its ~10 kernel launches per layer) runs the prefill graph of the
smallest bucket in `prefill_query_lens` >= q; the runner pads the request's query to it (model_runner.py
`_graph_query_len`: the padding tokens follow the real ones, write no KV and are never sampled, and causal
attention keeps them out of the real tokens' outputs). Its GEMMs see the bucket's row count, so its rounding
may differ from an eager step of q rows, as between any two batch shapes.

Invariants:
- Graphs read only the static buffers below; `run` copies a step's inputs into them, replays, and
  returns a view of the graph's output rows [0, n).
- Graphs are captured largest first (by tokens) in one shared memory pool, after an eager warm-up at the
  same size (which also compiles the Triton kernels outside the capture).
- A graph's attention metadata comes from the runner's AttentionMetadataBuilder (attention/backend.py),
  the same builder eager decode steps use, so its split-KV count for size s is the one an eager decode
  of any batch in bucket s gets, and decode graphs on and off give bitwise-identical results; kernels read
  real lengths from the buffers, so results are exact for any length.
- With `cascade` (the runner allows cascade attention, attention/cascade.py), decode graphs of at least
  CASCADE_MIN_REQS requests carry the prefix pass: their metadata holds the static `prefix_blocks` buffer,
  which `run` fills with the step's shared block count or 0 (then the pass reads nothing and attention is
  the plain one, bitwise). A cascade step of another shape runs eagerly.
- PREFILL_GRAPH_MAX_ENV (PAGODA_PREFILL_GRAPH_MAX_TOKENS, default 512) is the largest prefill bucket; 0
  captures none. Buckets are the powers of two from 16 up to it, so padding at most doubles a query.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from pagoda.attention.backend import AttentionMetadata, AttentionMetadataBuilder
from pagoda.attention.cascade import CASCADE_MIN_REQS

logger = logging.getLogger(__name__)


PREFILL_GRAPH_MAX_ENV = "PAGODA_PREFILL_GRAPH_MAX_TOKENS"
PREFILL_GRAPH_MIN_TOKENS = 16  # a query below this is padded to it (a decode-like query of <= 8 runs split-KV)


def prefill_query_lens(max_tokens: int, max_model_len: int) -> tuple[int, ...]:
    """The prefill buckets: powers of two from PREFILL_GRAPH_MIN_TOKENS to `max_tokens`, below max_model_len."""
    lens, q = [], PREFILL_GRAPH_MIN_TOKENS
    while q <= max_tokens and q < max_model_len:
        lens.append(q)
        q *= 2
    return tuple(lens)


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
                 attn_metadata: AttentionMetadataBuilder, verify_query_len: int | None = None,
                 cascade: bool = False) -> None:
        self.model = model
        self.cascade = cascade
        self.attn_metadata = attn_metadata  # the runner's builder: the backend's launch choices, as eager
        self.kv_caches = kv_caches
        self.sizes = capture_sizes(max_capture_size)
        self.max_model_len = max_model_len
        max_bs = self.sizes[-1]
        max_blocks = -(-max_model_len // block_size)
        self.query_lens = (1,) if verify_query_len is None else (1, verify_query_len)
        max_prefill = int(os.environ.get(PREFILL_GRAPH_MAX_ENV, "512"))
        # one request's prefill buckets (module docstring), minus a verify length (its graphs cover size 1 too)
        self.prefill_query_lens = tuple(q for q in prefill_query_lens(max_prefill, max_model_len)
                                        if q not in self.query_lens)
        max_tokens = max(max_bs * max(self.query_lens), max(self.prefill_query_lens, default=0))
        self.input_ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_tokens,), -1, dtype=torch.long, device=device)
        # Request i's tokens are rows [i * q, (i + 1) * q): one static query_start_loc per query length.
        self.query_start_loc = {q: torch.arange(0, (max_bs + 1) * q, q, dtype=torch.int32, device=device)
                                for q in self.query_lens}
        self.query_start_loc.update({q: torch.tensor([0, q], dtype=torch.int32, device=device)
                                     for q in self.prefill_query_lens})
        self.seq_lens = torch.ones(max_bs, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_bs, max_blocks, dtype=torch.int32, device=device)
        self.prefix_blocks = torch.zeros(1, dtype=torch.int32, device=device)  # cascade graphs' shared blocks
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (batch size, query length) -> graph
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        # steps served from graphs, per query length
        self.num_replays = dict.fromkeys(self.query_lens + self.prefill_query_lens, 0)

    def shapes(self) -> list[tuple[int, int]]:
        """Every (batch size, query length) captured, most tokens first (the capture order)."""
        shapes = [(size, q) for q in self.query_lens for size in self.sizes]
        shapes += [(1, q) for q in self.prefill_query_lens]
        return sorted(shapes, key=lambda shape: (-shape[0] * shape[1], -shape[1]))

    def _has_prefix_pass(self, size: int, q: int) -> bool:
        return self.cascade and q == 1 and size >= CASCADE_MIN_REQS

    def _metadata(self, size: int, q: int) -> AttentionMetadata:
        return self.attn_metadata.build(
            num_reqs=size,
            num_tokens=size * q,
            max_query_len=q,
            max_seq_len=self.max_model_len,
            query_start_loc=self.query_start_loc[q][: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[: size * q],
            query_start_loc_cpu=list(range(0, (size + 1) * q, q)),
            seq_lens_cpu=[q] * size,
            prefix_blocks=self.prefix_blocks if self._has_prefix_pass(size, q) else None,
        )

    def _forward(self, size: int, q: int) -> torch.Tensor:
        tokens = size * q
        return self.model(self.input_ids[:tokens], self.positions[:tokens], self.kv_caches, self._metadata(size, q))

    @torch.inference_mode()
    def capture(self) -> None:
        started = time.perf_counter()
        pool = None
        for size, q in self.shapes():
            self.seq_lens.fill_(q)  # a padding request's q queries attend to its q (garbage) keys
            self._forward(size, q)  # warm-up: compiles kernels, settles allocator state
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size, q] = self._forward(size, q)
            pool = graph.pool() if pool is None else pool
            self.graphs[size, q] = graph
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs (batch sizes 1..%d, query lengths %s; one request's prefill of up to "
                    "%s tokens) in %.1f s", len(self.graphs), self.sizes[-1], list(self.query_lens),
                    max(self.prefill_query_lens, default=0), time.perf_counter() - started)

    def can_run(self, metadata: AttentionMetadata) -> bool:
        q = metadata.max_query_len
        if metadata.num_tokens != metadata.num_reqs * q:
            return False
        if q in self.query_lens:
            if metadata.num_reqs > self.sizes[-1]:
                return False
            size = next(s for s in self.sizes if s >= metadata.num_reqs)
            return metadata.prefix_blocks is None or self._has_prefix_pass(size, q)
        return q in self.prefill_query_lens and metadata.num_reqs == 1

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        n, q = metadata.num_reqs, metadata.max_query_len
        size = next(s for s in self.sizes if s >= n)
        tokens = n * q
        self.input_ids[:tokens].copy_(input_ids)
        self.positions[:tokens].copy_(positions)
        self.slot_mapping[:tokens].copy_(metadata.slot_mapping)
        self.slot_mapping[tokens:size * q].fill_(-1)
        self.seq_lens[:n].copy_(metadata.seq_lens)
        self.seq_lens[n:size].fill_(q)
        width = metadata.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(metadata.block_tables)
        if self._has_prefix_pass(size, q):
            if metadata.prefix_blocks is None:
                self.prefix_blocks.fill_(0)
            else:
                self.prefix_blocks.copy_(metadata.prefix_blocks)
        self.graphs[size, q].replay()
        self.num_replays[q] += 1
        return self.outputs[size, q][:tokens]
