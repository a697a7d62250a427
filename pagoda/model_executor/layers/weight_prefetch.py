"""Overlap the trip of a layer's next weights from HBM into L2 with latency-bound kernels before them.

At decode with a handful of rows, a layer's rotary/KV write and attention leave HBM idle for several
microseconds, and the attention output projection after them is bound by reading its weight.
`prefetch_during(module, num_rows)` wraps those kernels: on entry it asks the GPU to bring the
module's parameters into L2 (pagoda.kernels.l2_prefetch), from a side stream forked off the current
one, so the hint is issued while the attention kernels run; on exit the current stream waits for the
side stream (whose kernel only issues hints and ends at once).

Invariants: values never change (a prefetch is a hint), so results are bitwise the same with it on or
off; the fork and join are stream waits, which CUDA-graph capture records as graph edges, so graphs
replay the same overlap; the decision depends on the row count only (tuning.L2_PREFETCH_MAX_ROWS),
never on data. Off CUDA it does nothing.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from pagoda.kernels import tuning
from pagoda.kernels.l2_prefetch import prefetch_l2

_side_streams: dict[int, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _side_streams:
        _side_streams[index] = torch.cuda.Stream(device=index)
    return _side_streams[index]


def prefetch_applies(module: nn.Module, num_rows: int) -> bool:
    params = list(module.parameters(recurse=False))
    return 0 < num_rows <= tuning.L2_PREFETCH_MAX_ROWS and bool(params) and params[0].is_cuda


@contextlib.contextmanager
def prefetch_during(module: nn.Module, num_rows: int):
    """Prefetch `module`'s own parameters into L2 while the body's kernels run (see the module doc)."""
    if not prefetch_applies(module, num_rows):
        yield
        return
    params = [p for p in module.parameters(recurse=False) if p.is_contiguous()]
    if not tuning.L2_PREFETCH_SIDE_STREAM:
        for p in params:
            prefetch_l2(p)
        yield
        return
    current = torch.cuda.current_stream(params[0].device)
    side = _side_stream(params[0].device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for p in params:
            prefetch_l2(p)
    try:
        yield
    finally:
        current.wait_stream(side)
