"""The runner's record of requests it failed on its own, until the scheduler has dropped them.

A request failed in the runner (see model_runner.py) is no longer computed, but the scheduler learns
of it only from that step's output, one step later under async scheduling, and keeps scheduling it
meanwhile. Its blocks from its first uncomputed position on may never be written; with prefix
caching those blocks are hashed (findable) from their allocation, so another request admitted in
the same window may have been given them as cached prefix and would attend to garbage.

Invariants:
- `unwritten[r]` (r failed here, not yet in a SchedulerOutput's finished_req_ids) holds every block
  id r was to write and may not have: its blocks from its computed length on, plus every block the
  scheduler allocated for it since.
- A new request whose cached prefix blocks intersect any `unwritten` set is failed too (its prefix
  would be garbage), so no healthy request ever reads a block nobody wrote. The scheduler drops the
  cache hashes of a failed request's blocks when it frees them (Scheduler.fail_requests), which
  closes the window for good.
- Empty in a healthy engine: every check here is behind `if failed:` and costs nothing then.
"""

from __future__ import annotations

from typing import Iterable

from pagoda.core.sched_output import CachedRequestData, NewRequestData


class FailedRequests:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.unwritten: dict[str, set[int]] = {}

    def __bool__(self) -> bool:
        return bool(self.unwritten)

    def __contains__(self, req_id: str) -> bool:
        return req_id in self.unwritten

    def add(self, req_id: str, block_ids: Iterable[int], num_computed_tokens: int) -> None:
        """`block_ids`: the request's block table in position order; those past its computed tokens count."""
        first = num_computed_tokens // self.block_size
        self.unwritten.setdefault(req_id, set()).update(int(b) for b in list(block_ids)[first:])

    def forget(self, finished_req_ids: Iterable[str]) -> None:
        for req_id in finished_req_ids:
            self.unwritten.pop(req_id, None)

    def split_cached(self, cached_reqs: list[CachedRequestData]) -> list[CachedRequestData]:
        """The cached requests to update; blocks newly allocated for failed ones are noted as unwritten."""
        keep = []
        for cached in cached_reqs:
            blocks = self.unwritten.get(cached.req_id)
            if blocks is None:
                keep.append(cached)
            else:
                blocks.update(cached.new_block_ids)
        return keep

    def shares_unwritten(self, new: NewRequestData) -> str | None:
        """The failed request whose unwritten blocks `new` got as cached prefix, if any."""
        num_hit_blocks = new.num_computed_tokens // self.block_size
        if num_hit_blocks == 0:
            return None
        hits = set(new.block_ids[:num_hit_blocks])
        for req_id, blocks in self.unwritten.items():
            if hits & blocks:
                return req_id
        return None
