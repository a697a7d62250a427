"""KV-cache sizing on a GPU: profile one worst-case step, give the rest of the budget to KV blocks.

budget  = total GPU memory × gpu_memory_utilization
used    = peak torch allocation during a dummy step of max_num_batched_tokens tokens (weights and
          activations included; the step's temporary KV cache is subtracted) + memory outside torch
          (CUDA context, cuBLAS workspaces) + a margin for CUDA-graph pools
kv      = budget − used, split into blocks of bytes_per_block

Invariants:
- The dummy step exercises the same code as a real one (model forward, logits and the sampler
  for max_num_seqs rows with top-k/top-p on), so the peak is the real peak.
- If nothing is left for the cache, the error says how much memory the model needs and how much
  the budget allows, in GiB.
- Blocks are sized in the cache's own dtype (worker.kv_cache_dtype: FP8 with kv_cache_dtype fp8*), so
  an FP8 cache gets twice the blocks of a bf16 one from the same budget; the log line states it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from pagoda.attention.backend import AttentionMetadata
from pagoda.model_executor.models.pipeline import local_forward

if TYPE_CHECKING:
    from pagoda.worker.worker import Worker

logger = logging.getLogger(__name__)

GIB = float(1 << 30)
CUDA_GRAPH_MARGIN_BYTES = 512 << 20


def dummy_metadata(num_tokens: int, max_len: int, block_size: int, num_blocks: int, device) -> tuple:
    """A prefill-only batch of `num_tokens` tokens split into requests of at most `max_len` tokens."""
    lengths = []
    remaining = num_tokens
    while remaining > 0:
        lengths.append(min(remaining, max_len))
        remaining -= lengths[-1]
    positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
    blocks_per_req = -(-max_len // block_size)
    block_tables = torch.zeros(len(lengths), blocks_per_req, dtype=torch.int32)
    slots = []
    for i, n in enumerate(lengths):
        ids = torch.arange(blocks_per_req, dtype=torch.int32) % num_blocks
        block_tables[i] = ids
        pos = torch.arange(n)
        slots.append(ids[pos // block_size].long() * block_size + pos % block_size)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    metadata = AttentionMetadata(
        num_reqs=len(lengths),
        num_tokens=num_tokens,
        max_query_len=max(lengths),
        max_seq_len=max(lengths),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lengths, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.cat(slots).to(device),
        query_start_loc_cpu=starts,
        seq_lens_cpu=lengths,
    )
    return positions, metadata


@torch.inference_mode()
def profile_num_blocks(worker: "Worker") -> int:
    config = worker.config
    device = worker.device
    block_size = config.cache.block_size
    num_tokens = config.scheduler.max_num_batched_tokens
    max_len = config.model.max_model_len
    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    weights_bytes = torch.cuda.memory_allocated(device)

    # A temporary cache just big enough for the dummy step (subtracted from the peak below).
    temp_blocks = min(-(-max_len // block_size), -(-num_tokens // block_size)) + 1
    spec = worker.kv_spec
    shape = worker.attn_backend.kv_cache_shape(temp_blocks, block_size, spec.num_kv_heads, spec.head_size)
    temp_caches = [torch.zeros(shape, dtype=worker.kv_cache_dtype, device=device) for _ in range(spec.num_layers)]
    temp_bytes = sum(t.numel() * t.element_size() for t in temp_caches)
    torch.cuda.reset_peak_memory_stats(device)

    positions, metadata = dummy_metadata(num_tokens, max_len, block_size, temp_blocks, device)
    input_ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    hidden = local_forward(worker.model, config.model.torch_dtype, input_ids, positions, temp_caches, metadata)
    if hidden is not None:  # None on a pipeline stage before the last, which never samples
        _profile_sampler(worker, hidden)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - temp_bytes
    del temp_caches, hidden
    torch.cuda.empty_cache()

    free, total = torch.cuda.mem_get_info(device)
    outside_torch = max(0, (total - free) - torch.cuda.memory_reserved(device))
    budget = total * config.cache.gpu_memory_utilization
    speculative = getattr(config, "speculative", None)
    # Verify-step graphs (speculative decoding) hold k + 1 tokens per request: their pool grows with it.
    graph_margin = CUDA_GRAPH_MARGIN_BYTES * (speculative.num_speculative_tokens + 1 if speculative else 1)
    used = peak + outside_torch + graph_margin
    bytes_per_block = worker.bytes_per_block()
    num_blocks = int((budget - used) // bytes_per_block)
    needed_for_one_seq = -(-max_len // block_size) * bytes_per_block
    if num_blocks * block_size < max_len:
        raise ValueError(
            f"not enough GPU memory: weights take {weights_bytes / GIB:.2f} GiB, a step of "
            f"{num_tokens} tokens peaks at {peak / GIB:.2f} GiB, and one max_model_len={max_len} "
            f"sequence needs {needed_for_one_seq / GIB:.2f} GiB of KV cache, but gpu_memory_utilization="
            f"{config.cache.gpu_memory_utilization} allows {budget / GIB:.2f} GiB of {total / GIB:.2f} GiB. "
            "Raise gpu_memory_utilization, or lower max_model_len or max_num_batched_tokens."
        )
    logger.info(
        "memory: weights %.2f GiB, peak step %.2f GiB, outside torch %.2f GiB, budget %.2f GiB -> KV cache %.2f GiB",
        weights_bytes / GIB, peak / GIB, outside_torch / GIB, budget / GIB, num_blocks * bytes_per_block / GIB,
    )
    logger.info(
        "GPU KV cache size: %d tokens (%s, kv_cache_dtype=%s); maximum concurrency for %d tokens per request: %.2fx",
        num_blocks * block_size, str(worker.kv_cache_dtype).removeprefix("torch."), config.cache.cache_dtype, max_len,
        num_blocks * block_size / max_len,
    )
    return num_blocks


def _profile_sampler(worker: "Worker", hidden: torch.Tensor) -> None:
    """Logits and sampling for max_num_seqs rows, with the costly stages (top-k/top-p, logprobs) on."""
    from pagoda.sample.sampler import Sampler
    from pagoda.sampling_params import SamplingParams
    from pagoda.worker.sampling_inputs import build_sampling_metadata

    if worker.config.model.runner_type == "pooling":
        return  # embedding models never compute logits or sample
    rows = min(worker.config.scheduler.max_num_seqs, hidden.shape[0])
    logits = worker.model.compute_logits(hidden[:rows])
    params = [SamplingParams(temperature=1.0, top_p=0.9, top_k=50, logprobs=worker.config.model.max_logprobs)] * rows
    metadata = build_sampling_metadata(params, logits.shape[-1], device=logits.device)
    Sampler().forward(logits, metadata)


def check_weights_fit(worker: "Worker") -> None:
    """Before loading: the model's weights must fit in the memory budget (a clear error, not an OOM)."""
    from pagoda.model_executor.model_loader.loader import _default_dtype, instantiate_model
    from pagoda.model_executor.models import ModelRegistry

    config = worker.config
    hf_config = config.model.hf_config
    model_cls = ModelRegistry.resolve_model_cls(list(getattr(hf_config, "architectures", None) or [config.model.architecture]))
    with _default_dtype(config.model.torch_dtype), torch.device("meta"):  # quantized layers at their real sizes
        shell = instantiate_model(model_cls, config.model, worker.attn_backend)
    weight_bytes = sum(p.numel() * p.element_size() for p in shell.parameters())
    free, total = torch.cuda.mem_get_info(worker.device)
    budget = min(free, total * config.cache.gpu_memory_utilization)
    if weight_bytes > budget:
        raise ValueError(
            f"model={config.model.model!r} needs {weight_bytes / GIB:.2f} GiB for its weights in "
            f"{config.model.dtype_name}, but only {budget / GIB:.2f} GiB are available "
            f"({free / GIB:.2f} GiB free of {total / GIB:.2f} GiB, gpu_memory_utilization="
            f"{config.cache.gpu_memory_utilization}). Use a smaller dtype, a smaller model, or more GPUs."
        )
