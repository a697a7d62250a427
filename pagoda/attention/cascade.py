"""When a step runs cascade (shared-prefix) attention, decided on the host from the step's block tables.

Many requests of a step often begin with the same blocks (one system prompt, prefix caching). Read per
request, that shared KV is loaded once per request and step; cascade attention
(pagoda.kernels.cascade_attention) attends every query row of the step to it in one pass, with
tensor-core tiles that span requests, and each request's own attention then starts after it.

Invariants:
- `common_prefix_blocks` counts the leading block-table columns that every row of the step holds alike,
  capped so that every query of the step sits after them (P * block_size <= each request's computed
  tokens): the prefix pass needs no causal mask and its rows see all of it.
- `use_cascade` depends on host ints only (the prefix length, the request and token counts, the heads, the
  SM count); a step that uses it gets the same tokens as one that does not, up to fp32 rounding in the
  softmax merge.
- Cascade needs at least CASCADE_MIN_REQS requests: below it the decode kernel (one launch per layer,
  kernels/decode_attention.py) serves small batches, and CUDA graphs of those sizes carry no prefix pass
  (worker/cuda_graph.py). CASCADE_ENV=0 turns cascade off.
"""

from __future__ import annotations

import os

import numpy as np

from pagoda.kernels import tuning

CASCADE_ENV = "PAGODA_CASCADE_ATTENTION"
CASCADE_MIN_PREFIX_TOKENS = 256  # vLLM's threshold: a shorter shared prefix is not worth a second pass
CASCADE_MIN_REQS = tuning.FUSED_DECODE_MAX_REQS + 1
# The kernels' CUDA tiles (kernels/tuning.py): the prefix pass's rows and positions, paged attention's prefill rows
# and positions.
PREFIX_TILE_ROWS, PREFIX_TILE_N, PAGED_TILE_ROWS, DECODE_TILE_N = 128, 64, 64, 64


def cascade_enabled() -> bool:
    value = os.environ.get(CASCADE_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{CASCADE_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def common_prefix_blocks(block_table: np.ndarray, rows: np.ndarray, computed: np.ndarray, block_size: int) -> int:
    """Leading blocks shared by every row in `rows` of `block_table` (the runner's host table), at most
    min(computed) // block_size so that every query of the step follows them."""
    limit = min(int(computed.min()) // block_size, block_table.shape[1])
    if limit <= 0 or len(rows) < 2:
        return 0
    head = block_table[rows, :limit]
    same = (head == head[0]).all(axis=0)
    return limit if same.all() else int(np.argmin(same))


def use_cascade(*, prefix_tokens: int, num_reqs: int, num_tokens: int, num_heads: int, num_kv_heads: int,
                num_sms: int = tuning.DEFAULT_SM_COUNT) -> bool:
    """Whether the prefix pass beats reading the shared prefix per request (a cost model in KV tiles per SM,
    after vLLM's: the prefix pass runs cdiv(tokens * group, 128) x Hkv programs over every prefix tile; the
    per-request kernels run one program per (query block, KV head) over the same tiles, a query block being a
    decode token or a chunk's PAGED_TILE_ROWS / group tokens)."""
    if prefix_tokens < CASCADE_MIN_PREFIX_TOKENS or num_reqs < CASCADE_MIN_REQS:
        return False
    group = num_heads // num_kv_heads
    prefix_tiles = -(-prefix_tokens // PREFIX_TILE_N)
    cascade_programs = -(-num_tokens * group // PREFIX_TILE_ROWS) * num_kv_heads
    cascade_time = -(-cascade_programs // num_sms) * prefix_tiles
    # paged attention: one program per request's decode token, or per PAGED_TILE_ROWS / group tokens of a chunk
    query_blocks = num_reqs + (num_tokens - num_reqs) // max(1, PAGED_TILE_ROWS // group)
    per_request_time = -(-query_blocks * num_kv_heads * (-(-prefix_tokens // DECODE_TILE_N)) // num_sms)
    return cascade_time < per_request_time
