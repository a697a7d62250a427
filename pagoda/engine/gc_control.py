"""The garbage collector around engine work: full collections wait until the engine is idle.

CPython runs a full (generation-2) pass after enough allocations, and a pass walks every live
container object that is not frozen. In an offline run of 1000 requests on the H200 three such passes
of ~200 ms each left the GPU idle (scripts/step_gaps.py): the host, not the device, set the pace of
those steps. Two rules avoid that:
- `deferred_full_collections()`: while requests are in flight, the heap that existed before (model,
  tokenizer, modules: never garbage) is frozen out of every pass, and generation 2's threshold is
  raised so that no full pass starts; generations 0 and 1 still run, so short-lived reference cycles
  are reclaimed as usual. On exit the thresholds are restored and the heap unfrozen.
- `collect_if_dirty()`: the engine loop calls it when it has nothing in flight; it runs the full pass
  the run put off (only when some work ran since the last one).

`PAGODA_GC_DEFER_FULL=0` keeps CPython's defaults (for A/B runs). Separately, `freeze_startup_heap()` freezes the
start-up heap of a long-lived serving process once it is ready (the engine core and the API server both call it).

Invariants: thresholds and the freeze are process-wide; a caller that froze the heap itself keeps
its freeze (no unfreeze here); nested use is a no-op inside the outer one.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time

ENABLED = os.environ.get("PAGODA_GC_DEFER_FULL", "1") == "1"
_FULL_PASS_THRESHOLD = 1_000_000  # generation-1 passes before a full one: never, in practice
_depth = 0


@contextlib.contextmanager
def deferred_full_collections():
    """No full collection while the body runs (see the module docstring)."""
    global _depth
    if not ENABLED or _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    froze = not gc.get_freeze_count()
    if froze:
        gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], _FULL_PASS_THRESHOLD)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        gc.set_threshold(*thresholds)
        if froze:
            gc.unfreeze()


def freeze_startup_heap() -> tuple[int, float]:
    """For a process that serves until it exits (the engine core, the API server): one full pass now, then every
    object still alive (modules, the tokenizer, the app: never garbage) is frozen out of every later pass, so a
    full pass during serving walks only what serving allocated. In the API server's heap on the 2-core CPU
    machine (demo model) a full pass took 168-197 ms over 336k objects before the freeze and ~0 after (session 19,
    scripts/api_server_gc_probe.py),
    a pause in the event loop that every streaming request waits out. Returns (objects frozen, seconds of the
    pass)."""
    started = time.perf_counter()
    gc.collect()
    elapsed = time.perf_counter() - started
    gc.freeze()
    return gc.get_freeze_count(), elapsed


class IdleCollector:
    """Runs the put-off full pass once the engine is idle, if it did work since the last one."""

    def __init__(self) -> None:
        self.dirty = False

    def worked(self) -> None:
        self.dirty = True

    def collect_if_dirty(self) -> bool:
        if not (ENABLED and self.dirty):
            return False
        self.dirty = False
        gc.collect()
        return True
