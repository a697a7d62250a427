"""Start-up kernel warm-up: a few eager forwards over dummy batches, so Triton compiles its variants
before the first real step rather than inside it.

Triton compiles a kernel once per specialization: its constexpr arguments (BLOCK_M is 16 for
decode-like batches and 64 when a prefill chunk is present; NUM_SPLITS) and, for every integer
argument, whether it is 1, a multiple of 16 or neither (paged attention's num_reqs and block-table
stride). The memory-profiling step compiles one big prefill and CUDA-graph capture compiles the
decode steps it captures; the batches below cover the shapes a real workload adds on top:
prefill and mixed prefill+decode batches whose request counts and block-table widths are 1, a
multiple of 16 or neither, eager decode batches beyond the largest CUDA graph (or, without graphs,
decode batches of 1, 7 and 16), and the LM head on 1 and on an odd number of rows. The fused
sampling kernels (kernels/sample.py) compile once per vocab split count: each count the batch sizes
up to max_num_seqs can pick runs once on one dummy row, plus the uniforms kernel of the torch path, and
structured output's bitmask kernel at each block size a step can pick.

Invariants:
- The KV cache is never written: every dummy token's slot is -1, which every attention backend skips
  (attention/triton_backend.py, attention/torch_backend.py). Block tables are all block 0, so the
  attention reads real cache contents but its outputs are thrown away.
- The runner's request state (InputBatch, sampling inputs, generators, the step in flight) and the
  torch RNG are untouched: only `runner.model` and the sampling kernels are called, with fixed seeds
  that they are given (they draw nothing from torch's generators).
- Every dummy batch fits the scheduler's limits: at most max_num_seqs requests, at most
  max_num_batched_tokens tokens, sequences of at most max_model_len; at most 13 forwards in all (7, plus 6
  with a prefix pass when the runner may run cascade attention).
- Pooling models run only the prefill batches (their requests are never chunked or decoded) and no
  LM head.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from pagoda.attention.backend import AttentionMetadata
from pagoda.attention.cascade import CASCADE_MIN_REQS
from pagoda.config import PagodaConfig
from pagoda.model_executor.models.pipeline import local_forward

logger = logging.getLogger(__name__)

DECODE_SEQ_LEN = 130  # sequence length of dummy decode rows (a 128-token prompt two tokens in)
WIDE_BLOCK_TABLE = 16  # a block-table width that is a multiple of 16 (Triton specializes on it)
MIXED_DECODE_ROWS = 30  # decode rows next to the prefill chunks of a mixed batch
SMALL_DECODE_SIZES = (1, 7, 16)  # eager decode batches when CUDA graphs are off: == 1, odd, % 16


@dataclass(frozen=True)
class DummyBatch:
    """One flat batch: request i has query_lens[i] new tokens and seq_lens[i] tokens in all."""

    name: str
    query_lens: tuple[int, ...]
    seq_lens: tuple[int, ...]
    block_table_width: int
    cascade: bool = False  # with a (zero) prefix_blocks: the cascade kernels' variants (attention/cascade.py)

    @property
    def num_reqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)


def plan_batches(config: PagodaConfig, graph_max_size: int | None, cascade: bool = False) -> list[DummyBatch]:
    """The dummy batches for this config; `graph_max_size` is the largest decode batch that CUDA
    graphs replay (None: no graphs, every decode step runs eagerly); `cascade`: the runner may run
    cascade attention, so eager steps of at least CASCADE_MIN_REQS requests also run with a prefix pass."""
    sched, max_len, block_size = config.scheduler, config.model.max_model_len, config.cache.block_size
    max_width = -(-max_len // block_size)

    def batch(name: str, prefills: list[int], decodes: int = 0, wide: bool = False, prefix: bool = False) -> DummyBatch:
        prefills = [min(n, max_len) for n in prefills]
        decodes = max(0, min(decodes, sched.max_num_seqs - len(prefills)))
        seq_lens = prefills + [min(DECODE_SEQ_LEN, max_len)] * decodes
        width = -(-max(seq_lens) // block_size)
        if wide and width <= WIDE_BLOCK_TABLE <= max_width:
            width = WIDE_BLOCK_TABLE
        return DummyBatch(name, tuple(prefills + [1] * decodes), tuple(seq_lens), width, prefix)

    batches = [
        batch("prefill 2x37", [37, 37], wide=True),  # 74 tokens (not % 16), 2 requests, 16-wide table
        batch("prefill 16x64", [64] * 16),  # 1024 tokens, 16 requests: a first step of whole prompts
        batch("prefill 1x97", [97]),  # a lone request (num_reqs == 1), odd token count
    ]
    if config.model.runner_type == "generate":
        batches += [
            # Chunked prefill's usual step: prefill chunks (max_query_len > 8) beside decode rows.
            batch("mixed 3+30", [40, 33, 24], decodes=MIXED_DECODE_ROWS),  # 33 requests, 127 tokens
            batch("mixed 2+30", [64, 34], decodes=MIXED_DECODE_ROWS, wide=True),  # 32 requests, 128 tokens
        ]
        if graph_max_size is None:
            decode_sizes = list(SMALL_DECODE_SIZES)
        else:  # decode steps past the largest graph run eagerly: an odd size and a multiple of 16
            decode_sizes = [(graph_max_size + 1) | 1, (graph_max_size // 16 + 1) * 16]
        batches += [batch(f"decode {n}", [], decodes=n) for n in decode_sizes if n <= sched.max_num_seqs]
        if cascade:  # the same eager steps once they share a prefix: a mixed one and the eager decodes
            # Triton specializes the prefix pass on its row count (tokens x group) and paged attention on the
            # request count and block-table width, each on its own: every pairing of a request count that is
            # or is not a multiple of 16 with a narrow (odd) or a 16-wide table (W8's mixed steps hit them all).
            batches += [batch("mixed cascade 3+70", [40, 33, 24], decodes=70, prefix=True),
                        batch("mixed cascade 2+78", [64, 34], decodes=78, wide=True, prefix=True),
                        batch("mixed cascade 3+77", [40, 33, 24], decodes=77, prefix=True),
                        batch("mixed cascade 2+71", [64, 34], decodes=71, wide=True, prefix=True)]
            batches += [batch(f"decode cascade {n}", [], decodes=n, prefix=True) for n in decode_sizes
                        if CASCADE_MIN_REQS <= n <= sched.max_num_seqs]
    planned: list[DummyBatch] = []
    for b in batches:
        fits = 0 < b.num_tokens <= sched.max_num_batched_tokens and b.num_reqs <= sched.max_num_seqs
        same_shape = any((p.query_lens, p.block_table_width, p.cascade) == (b.query_lens, b.block_table_width, b.cascade)
                         for p in planned)
        fits = fits and (not b.cascade or b.num_reqs >= CASCADE_MIN_REQS)
        if fits and not same_shape:
            planned.append(b)
    return planned


def _metadata(runner, b: DummyBatch) -> tuple[torch.Tensor, AttentionMetadata]:
    """Positions and attention metadata for `b`, built as ModelRunner._prepare_inputs does, with
    every slot -1 (nothing written) and every block-table entry block 0."""
    device = runner.device
    query_lens = np.array(b.query_lens, dtype=np.int64)
    seq_lens = np.array(b.seq_lens, dtype=np.int64)
    query_start = np.zeros(b.num_reqs + 1, dtype=np.int64)
    np.cumsum(query_lens, out=query_start[1:])
    positions = np.concatenate([np.arange(s - q, s) for q, s in zip(query_lens, seq_lens)])
    metadata = runner.attn_metadata.build(  # the runner's builder: the same launch choices as real steps
        num_reqs=b.num_reqs,
        num_tokens=b.num_tokens,
        max_query_len=int(query_lens.max()),
        max_seq_len=int(seq_lens.max()),
        query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.zeros(b.num_reqs, b.block_table_width, dtype=torch.int32, device=device),
        slot_mapping=torch.full((b.num_tokens,), -1, dtype=torch.int64, device=device),
        query_start_loc_cpu=query_start.tolist(),
        seq_lens_cpu=seq_lens.tolist(),
        prefix_blocks=torch.zeros(1, dtype=torch.int32, device=device) if b.cascade else None,
    )
    return torch.tensor(positions, dtype=torch.long, device=device), metadata


def _run_batch(runner, b: DummyBatch, logits: bool) -> None:
    positions, metadata = _metadata(runner, b)
    input_ids = torch.zeros(b.num_tokens, dtype=torch.long, device=runner.device)
    hidden = local_forward(runner.model, runner.config.model.torch_dtype, input_ids, positions, runner.kv_caches,
                           metadata)
    if not logits or hidden is None:  # hidden is None on a pipeline stage before the last
        return
    last_tokens = torch.tensor(metadata.query_start_loc_cpu[1:], device=runner.device) - 1
    odd = b.num_reqs if b.num_reqs % 2 else b.num_reqs - 1
    for rows in sorted({1, odd}):  # the sampled rows of a step: gathered, as the runner does
        runner.model.compute_logits(hidden[last_tokens[:rows]])


def _warm_sampler(runner) -> None:
    """One dummy row through the fused sampling kernels at every vocab split count a batch can pick, and
    through the top-k path's, the top-p threshold's, the logprobs' and structured output's bitmask kernels (so no
    request waits for their compiles)."""
    from pagoda.kernels import tuning
    from pagoda.kernels.logprob_stats import logprob_stats
    from pagoda.kernels.sample import race_sample, race_uniforms, race_uniforms_at
    from pagoda.kernels.token_bitmask import apply_token_bitmask_triton, block_size
    from pagoda.kernels.top_p import top_p_thresholds

    vocab, device = runner.vocab_size, runner.device
    logits = torch.zeros(1, vocab, dtype=runner.config.model.torch_dtype, device=device)
    temperature = torch.ones(1, dtype=torch.float32, device=device)
    seeds = torch.zeros(1, dtype=torch.int64, device=device)
    sms = tuning.sm_count(device.index)
    for splits in sorted({tuning.sample_splits(rows, vocab, sms)
                          for rows in range(1, runner.config.scheduler.max_num_seqs + 1)}):
        for dtype in {logits.dtype, torch.float32}:  # raw logits, or the float32 copy of processed ones
            race_sample(logits.to(dtype), temperature, seeds, num_splits=splits)
    race_uniforms(seeds, vocab)
    for k in (1, 16):  # Triton specializes an int argument on its divisibility by 16
        race_uniforms_at(seeds, torch.zeros(1, k, dtype=torch.int64, device=device))
    logprob_stats(logits, seeds)
    ones = torch.ones(1, dtype=torch.float32, device=device)
    for dtype in {logits.dtype, torch.float32}:  # raw logits, or the float32 copy of processed ones
        top_p_thresholds(logits.to(dtype), ones, ones * 0.5, ones * 0.1)
    # Structured output's bitmask kernel, at each block a step's mask row count can pick, over all rows and over
    # some (row indices); the mask allows every token, so the logits are left as they are.
    allow_all = torch.full((1, -(-vocab // 32)), -1, dtype=torch.int32, device=device)
    first_row = torch.zeros(1, dtype=torch.int64, device=device)
    for block in sorted({block_size(rows, vocab, sms) for rows in range(1, runner.config.scheduler.max_num_seqs + 1)}):
        for row_indices in (None, first_row):
            apply_token_bitmask_triton(logits, allow_all, row_indices, block=block)


@torch.inference_mode()
def warm_up_kernels(runner, graph_max_size: int | None = None, *, force: bool = False) -> int:
    """Run the dummy batches of `plan_batches` through `runner.model` (a ModelRunner's); returns how
    many forwards ran. Only on CUDA unless `force`. `graph_max_size` defaults to the largest size of
    `runner.cuda_graphs` when graphs were captured already (None and no graphs: all decodes eager)."""
    if runner.device.type != "cuda" and not force:
        return 0
    if graph_max_size is None and runner.cuda_graphs is not None:
        graph_max_size = runner.cuda_graphs.sizes[-1]
    started = time.perf_counter()
    forwards = run_warm_up_forwards(runner, graph_max_size)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
        torch.cuda.empty_cache()  # give the activations back before CUDA-graph pools are allocated
    logger.info("warmed up kernels with %d dummy forwards in %.2f s", forwards, time.perf_counter() - started)
    return forwards


def run_warm_up_forwards(runner, graph_max_size: int | None) -> int:
    """The warm-up's work alone (no synchronize, no log): every planned batch, then the sampling kernels on
    CUDA; returns how many forwards ran. worker/precompile.py runs it in compile-only mode."""
    logits = runner.config.model.runner_type == "generate"
    batches = plan_batches(runner.config, graph_max_size, getattr(runner, "cascade", False))
    for b in batches:
        _run_batch(runner, b, logits)
    stage = getattr(runner, "stage", None)
    if logits and runner.device.type == "cuda" and (stage is None or stage.is_last):
        _warm_sampler(runner)
    return len(batches)
