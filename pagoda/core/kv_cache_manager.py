"""Per-request block tables over the BlockPool, and automatic prefix caching.

Invariants:
- `req_to_blocks[r]` holds exactly ceil(slots allocated / block_size) blocks, in position order;
  each is referenced once by r (a shared prefix block has ref_cnt == number of requests using it).
  Slots allocated may run `num_lookahead_tokens` past the step's tokens: room for a draft model's
  k tokens after them (speculative decoding), never hashed (they hold no known token yet).
- A block's hash is the hash of (previous block's hash, this block's token ids): equal hashes mean
  equal whole prefixes. Only full blocks are hashed.
- Blocks are hashed (and so become findable) when they are allocated for a step that fills them,
  before the forward pass runs. This is safe because a backend writes a step's K/V into the cache
  before any request of that step attends (see attention/backend.py): a request scheduled in the
  same step as the one computing a block may already share it.
- A cache hit never covers a request's last token: its logits are needed to sample.
"""

from __future__ import annotations

import hashlib
from array import array

from pagoda.core.block_pool import BlockPool, KVCacheBlock
from pagoda.core.request import Request

_ROOT_HASH = b"pagoda-prefix-root"


def hash_block(parent: bytes | None, token_ids: list[int]) -> bytes:
    digest = hashlib.blake2b(parent or _ROOT_HASH, digest_size=16)
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_hashed_blocks: dict[str, int] = {}  # leading blocks of a request already offered to the cache
        self.prefix_queries = 0  # prompt tokens looked up (metrics)
        self.prefix_hits = 0  # of which found in the cache

    @property
    def usage(self) -> float:
        return self.pool.usage

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, ())]

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The longest cached prefix of a request that has nothing computed yet."""
        if not self.enable_caching or request.skip_prefix_cache:
            return [], 0
        self._update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        num_hit_tokens = len(hits) * self.block_size
        self.prefix_queries += request.num_tokens
        self.prefix_hits += num_hit_tokens
        return hits, num_hit_tokens

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
        num_new_computed_tokens: int = 0,
        num_lookahead_tokens: int = 0,
    ) -> list[KVCacheBlock] | None:
        """Reserve room for `num_new_tokens` more tokens (plus `num_lookahead_tokens` slots after them);
        None (and no change) when it won't fit."""
        new_computed_blocks = new_computed_blocks or []
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        total_tokens = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        num_required = -(-(total_tokens + num_lookahead_tokens) // self.block_size)
        num_new_blocks = num_required - len(blocks) - len(new_computed_blocks)
        if num_new_blocks <= 0 and not new_computed_blocks:  # the common decode step: room already there
            if self.enable_caching:
                self._cache_full_blocks(request, blocks, min(total_tokens, request.num_tokens))
            return []
        # Cache hits that sit in the free queue stop being free once touched.
        num_evictable_hits = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - num_evictable_hits:
            if not blocks:
                del self.req_to_blocks[request.request_id]
            return None
        self.pool.touch(new_computed_blocks)
        blocks.extend(new_computed_blocks)
        new_blocks = self.pool.get_new_blocks(max(num_new_blocks, 0))
        blocks.extend(new_blocks)
        if self.enable_caching:
            self._cache_full_blocks(request, blocks, min(total_tokens, request.num_tokens))
        return new_blocks

    def free(self, request: Request) -> None:
        """Release a request's blocks; the tail goes first so eviction takes it before the prefix."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_hashed_blocks.pop(request.request_id, None)
        self.pool.free_blocks(list(reversed(blocks)))

    def _cache_full_blocks(self, request: Request, blocks: list[KVCacheBlock], num_tokens: int) -> None:
        num_full = num_tokens // self.block_size
        start = self.num_hashed_blocks.get(request.request_id, 0)
        if num_full <= start:
            return
        self._update_block_hashes(request)
        for index in range(start, num_full):
            self.pool.cache_block(blocks[index], request.block_hashes[index])
        self.num_hashed_blocks[request.request_id] = num_full

    def _update_block_hashes(self, request: Request) -> None:
        hashes, size = request.block_hashes, self.block_size
        tokens = request.all_token_ids
        while (len(hashes) + 1) * size <= len(tokens):
            start = len(hashes) * size
            parent = hashes[-1] if hashes else getattr(request, "cache_salt", None)  # images: see Request.cache_salt
            hashes.append(hash_block(parent, tokens[start : start + size]))
