"""`VLLM_GC_DEBUG`: log every garbage-collector pass of a serving process, as vLLM's GC debugger does.

A full (generation-2) pass stops the process while it walks every tracked object: in the API server that is a
pause of the event loop which every streaming request waits out, so a tail of slow first tokens can come from
it. This logger says when each pass ran, its generation, how long it took and what it freed, so such a tail can
be matched against passes (the API server and the engine core each attach it at start-up).

Values of VLLM_GC_DEBUG (PAGODA_GC_DEBUG is read when it is unset):
- unset, empty or "0": off (no callback is installed: nothing is paid);
- "1": one INFO line per pass: generation, milliseconds, objects collected and uncollectable;
- '{"top_objects": K}' (JSON): also the K most common types among the objects the pass walks, counted when
  the pass starts (this walk is itself as slow as a pass: for debugging only).
Anything else is refused with a ValueError naming the variable and these forms.

Invariants: at most one callback per process (attaching twice is a no-op); the callback never raises into
the collector (a failure to describe a pass is logged once and the logger detaches).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections import Counter

logger = logging.getLogger(__name__)

FORMS = "unset or 0 (off), 1 (each pass's generation and time), or JSON {\"top_objects\": K} (K >= 1)"


def parse(value: str | None) -> int | None:
    """None: off; 0: timings only; K > 0: timings and the K most common walked types."""
    if value is None or value.strip() in ("", "0"):
        return None
    text = value.strip()
    if text == "1":
        return 0
    try:
        conf = json.loads(text)
    except json.JSONDecodeError:
        conf = None
    top = conf.get("top_objects") if isinstance(conf, dict) and set(conf) == {"top_objects"} else None
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"VLLM_GC_DEBUG={value!r} is not understood; allowed: {FORMS}")
    return top


class GCDebugLogger:
    def __init__(self, process: str, top_objects: int) -> None:
        self.process = process
        self.top_objects = top_objects
        self._started = 0.0
        self._walked = ""

    def __call__(self, phase: str, info: dict) -> None:
        try:
            if phase == "start":
                self._walked = self._describe(info["generation"]) if self.top_objects else ""
                self._started = time.perf_counter()
                return
            elapsed_ms = (time.perf_counter() - self._started) * 1e3
            logger.info("%s: GC generation %d pass took %.1f ms (collected %d, uncollectable %d)%s", self.process,
                        info["generation"], elapsed_ms, info["collected"], info["uncollectable"], self._walked)
        except Exception:  # noqa: BLE001 - never break the collector; say so once and stop logging
            logger.exception("%s: GC debug logging failed; it is turned off", self.process)
            detach()

    def _describe(self, generation: int) -> str:
        counts: Counter = Counter()
        for g in range(generation + 1):  # a pass of generation g walks generations 0..g
            counts.update(type(o).__name__ for o in gc.get_objects(generation=g))
        top = ", ".join(f"{name} {n}" for name, n in counts.most_common(self.top_objects))
        return f"; walked {sum(counts.values())} objects, most common: {top}"


_attached: GCDebugLogger | None = None


def attach(process: str) -> bool:
    """Install the pass logger in this process if VLLM_GC_DEBUG (or PAGODA_GC_DEBUG) asks for it; True if it did."""
    global _attached
    value = os.environ.get("VLLM_GC_DEBUG")
    if value is None:
        value = os.environ.get("PAGODA_GC_DEBUG")
    top = parse(value)
    if top is None or _attached is not None:
        return False
    _attached = GCDebugLogger(process, top)
    gc.callbacks.append(_attached)
    logger.info("%s: logging every garbage-collector pass (VLLM_GC_DEBUG=%s)", process, value)
    return True


def detach() -> None:
    global _attached
    if _attached is not None and _attached in gc.callbacks:
        gc.callbacks.remove(_attached)
    _attached = None
