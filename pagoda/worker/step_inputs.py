"""A step's flat model inputs, built for the ModelRunner: token ids, positions and attention metadata of the
scheduled requests, and the query length a step is padded to so that it replays a CUDA graph.

Invariants:
- Request i's tokens are rows query_start[i]:query_start[i + 1] of the flat batch, in the order of `rows`;
  its positions run from its computed count on. Without padding the batch is exactly the scheduled tokens.
- A step is padded (`graph_query_len`) only to a CUDA graph's query length: a verify step whose requests
  carry different numbers of drafts, while the padded step has at most max(2 x its real tokens,
  PAD_MAX_TOKENS) tokens, no pooling request and no more requests than the largest graph; or one request's
  prefill, to a prefill graph's bucket (`prefill_graph_len`; never for a pooling request or a multimodal,
  M-RoPE or speculative runner). Never past max_model_len. Padding tokens follow a request's real ones, are
  id 0, write no KV (slot -1) and are never sampled.
- Host positions are exact unless a verify step is still in flight: its requests were scheduled as if every
  draft was accepted, so their positions, sequence lengths and slots are moved back on the device by what it
  rejected (worker/step_output.py).
- A placeholder token (sampled by the step in flight, or drafted on the device) is read on the device from
  the runner's `last_sampled` or the speculative step's draft ids, never from their host copy.
- Cascade attention (`prefix_blocks` in the metadata) when the runner allows it (`runner.cascade`), the step has
  at least CASCADE_MIN_REQS requests sharing their leading blocks and the cost model says it pays
  (attention/cascade.py); counted in `runner.num_cascade_steps`.
- Nothing else here writes runner state (InputBatch, the steps in flight). The padding choice is called through
  the runner's `_graph_query_len` and `_prefill_graph_len` methods (the tests replace them there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pagoda.attention import cascade
from pagoda.worker.input_batch import to_device
from pagoda.worker.step_output import PLACEHOLDER, VerifiedTokens

if TYPE_CHECKING:
    from pagoda.worker.model_runner import ModelRunner

# A non-uniform verify step is padded to a CUDA graph's query length while it has at most this many tokens
# padded (or at most twice its real ones): below it a forward pass is memory-bound, so padding costs little.
PAD_MAX_TOKENS = 512


def prepare_inputs(runner: ModelRunner, rows: np.ndarray, counts: np.ndarray) -> dict:
    """The step's flat inputs. Requests may be padded to one query length (`_graph_query_len`): the padding
    tokens follow a request's real ones, write no KV (slot -1) and are never sampled."""
    batch, block_size = runner.batch, runner.block_size
    starts = batch.num_computed[rows]
    ends = starts + counts
    pad_to = runner._graph_query_len(rows, starts, counts)
    width = counts if pad_to is None else np.full(len(rows), pad_to, dtype=np.int64)
    total = int(width.sum())
    query_start = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(width, out=query_start[1:])
    token_rows = np.repeat(rows, width)
    index_in_row = np.arange(total) - np.repeat(query_start[:-1], width)
    positions = np.repeat(starts, width) + index_in_row
    input_ids = batch.token_ids[token_rows, positions]
    padding = None
    if pad_to is not None:
        padding = index_in_row >= np.repeat(counts, width)
        input_ids[padding] = 0
    query_ends = starts + width  # = ends unless padded
    max_blocks = int(-(-query_ends.max() // block_size))
    device = runner.device
    block_tables = to_device(batch.block_table[rows, :max_blocks], device)
    positions_dev, seq_lens_dev = to_device(positions, device), to_device(query_ends.astype(np.int32), device)
    slot_mapping_dev, seq_lens_cpu, max_seq_len = None, query_ends.tolist(), int(query_ends.max())
    verified = runner.unfilled[-1] if runner.unfilled and isinstance(runner.unfilled[-1], VerifiedTokens) else None
    src = verified.sources(rows, batch) if verified is not None else None
    if src is None or not (src >= 0).any():  # host positions are exact: slots from the host block table
        block_ids = batch.block_table[token_rows, positions // block_size].astype(np.int64)
        slot_mapping = block_ids * block_size + positions % block_size
        if padding is not None:
            slot_mapping[padding] = -1
        slot_mapping_dev = to_device(slot_mapping, device)
    else:
        # Requests whose verify step is in flight were scheduled as if all its drafts were accepted: move
        # their positions back by what it rejected, on the device (see worker/step_output.py).
        hit = np.flatnonzero(src >= 0)
        rejected = torch.zeros(len(rows), dtype=torch.int64, device=device)
        rejected[to_device(hit, device)] = verified.rejected[to_device(src[hit], device)]
        token_req = to_device(np.repeat(np.arange(len(rows)), width), device)
        positions_dev = positions_dev - rejected[token_req]
        seq_lens_dev = (seq_lens_dev - rejected).to(torch.int32)
        slot_mapping_dev = (block_tables[token_req, positions_dev // block_size].to(torch.int64) * block_size
                            + positions_dev % block_size)
        if padding is not None:
            slot_mapping_dev[to_device(np.flatnonzero(padding), device)] = -1
        if runner.attn_metadata.needs_host_lengths:  # exact host lengths (free on the CPU, a sync elsewhere)
            seq_lens_cpu = seq_lens_dev.tolist()
            max_seq_len = max(seq_lens_cpu)
    prefix_blocks = None
    if runner.cascade and len(rows) >= cascade.CASCADE_MIN_REQS:
        common = cascade.common_prefix_blocks(batch.block_table, rows, starts, block_size)
        shared = runner.attn_metadata.cascade_prefix_blocks(common, block_size, num_reqs=len(rows), num_tokens=total)
        if shared:
            prefix_blocks = to_device(np.array([shared], dtype=np.int32), device)
            runner.num_cascade_steps += 1
    metadata = runner.attn_metadata.build(
        num_reqs=len(rows),
        num_tokens=total,
        max_query_len=int(width.max()),
        max_seq_len=max_seq_len,
        query_start_loc=to_device(query_start.astype(np.int32), device),
        seq_lens=seq_lens_dev,
        block_tables=block_tables,
        slot_mapping=slot_mapping_dev,
        query_start_loc_cpu=query_start.tolist(),
        seq_lens_cpu=seq_lens_cpu,
        prefix_blocks=prefix_blocks,
    )
    input_ids_dev = to_device(input_ids, device)
    holes = np.flatnonzero(input_ids == PLACEHOLDER)
    if holes.size:  # tokens sampled by the step still in flight, or drafted on the device: take them there
        hole_rows, hole_index = token_rows[holes], index_in_row[holes]
        newest = hole_index == 0  # a request's first scheduled token: the newest the step in flight yields
        if newest.all():
            input_ids_dev[to_device(holes, device)] = runner.last_sampled[to_device(runner.pending_src[hole_rows], device)]
        else:
            source = torch.cat([runner.last_sampled, runner.spec.draft_ids.reshape(-1)])
            where = np.where(newest, runner.pending_src[hole_rows],
                             len(runner.last_sampled) + hole_rows * runner.spec.num_speculative_tokens + hole_index - 1)
            input_ids_dev[to_device(holes, device)] = source[to_device(where, device)]
    return {
        "input_ids": input_ids_dev,
        "positions": positions_dev,
        "attn_metadata": metadata,
        "starts": starts,
        "ends": ends,
        "query_start": query_start[:-1],
    }


def graph_query_len(runner: ModelRunner, rows: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> int | None:
    """The query length to pad every request of a step to, so that a verify step whose requests carry
    different numbers of drafts (or none) replays a CUDA graph; None: run the step as it is."""
    lens = runner.pad_query_lens or (runner.cuda_graphs.query_lens if runner.cuda_graphs is not None else ())
    top = int(counts.max())
    if top == 1:
        return None
    prefill_lens = runner.pad_prefill_lens or (runner.cuda_graphs.prefill_query_lens if runner.cuda_graphs else ())
    if len(rows) == 1 and prefill_lens and top not in lens:
        return runner._prefill_graph_len(rows, starts, top, prefill_lens)
    if int(counts.min()) == top:
        return None  # already uniform
    q = next((q for q in sorted(lens) if q >= top), None)
    if q is None or (runner.cuda_graphs is not None and len(rows) > runner.cuda_graphs.sizes[-1]):
        return None
    padded, real = q * len(rows), int(counts.sum())
    # Padding costs compute, eager steps launch overhead (~20 ms for 32 layers): pad while the step stays small
    # (memory-bound) or at most doubles.
    if padded > max(2 * real, PAD_MAX_TOKENS) or runner.batch.is_pooling[rows].any():
        return None
    if (starts + q > runner.config.model.max_model_len).any():
        return None  # the padding would pass the model's positions
    return q


def prefill_graph_len(runner: ModelRunner, rows: np.ndarray, starts: np.ndarray, num_tokens: int, lens) -> int | None:
    """One request computing `num_tokens`: the prefill graph's bucket to pad it to (worker/cuda_graph.py), or None
    (no bucket fits; a pooling, multimodal or speculative runner, whose extra inputs graphs do not carry)."""
    q = next((q for q in sorted(lens) if q >= num_tokens), None)
    if q is None or q == num_tokens:
        return None  # runs as it is: eagerly, or its own graph
    if runner.mm is not None or runner.mrope is not None or runner.spec is not None or runner.batch.is_pooling[rows].any():
        return None
    if int(starts[0]) + q > runner.config.model.max_model_len:
        return None  # the padding would pass the model's positions
    return q
