"""A watch on Triton compiles after start-up: each one is a request waiting (hundreds of ms of p99 TTFT).

The worker warms up every kernel variant it can foresee and captures its CUDA graphs before serving
(worker/warmup.py); a Triton kernel that still compiles later ran with an argument specialization the
warm-up did not cover (a dtype, a constexpr tile size, an int argument's divisibility by 16). Once
`watch_runtime_compiles()` has run, each such compile (or load from Triton's disk cache: the hook fires
on a miss of the in-memory cache) is logged once, at WARNING, with Triton's own
description of the variant (kernel name, launch options, argument types and specializations), and
counted (`runtime_compiles()`), so a serving benchmark's slow first tokens can be matched to them.
Installed with a `phase` (the worker does so after its compile pass, worker/precompile.py), it logs the
compiles of that start-up phase at INFO instead, naming the phase ("the compile pass missed it"), apart
from the runtime count; `watch_runtime_compiles()` without a phase ends it.

Invariants: the watch never changes whether or how a kernel compiles (its hook returns None and
calls any hook installed before it); explicit warm-up compiles (`run(warmup=True)`, the compile pass) are
not recorded; it is installed at most once per process; with a Triton that
has no `knobs.runtime.jit_cache_hook` it is a no-op (returns False).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_seen: set[str] = set()
_installed = False
_phase: str | None = None  # a start-up phase whose compiles are logged at INFO (see the module docstring)
_phase_seen: set[str] = set()


def runtime_compiles() -> int:
    """How many kernel variants compiled since the watch was installed."""
    return len(_seen)


def record_compile(description: str) -> None:
    """Note one compile of the variant `description` (logged the first time it is seen)."""
    if _phase is not None:
        if description not in _phase_seen:
            _phase_seen.add(description)
            logger.info("Triton compiled a kernel during %s (the compile pass missed it): %s", _phase, description)
        return
    if description in _seen:
        return
    _seen.add(description)
    logger.warning("Triton compiled a kernel after start-up (or loaded it from its disk cache; either way a "
                   "request waited for it, and warm-up should cover this variant): %s", description)


def describe_variant(hook_kwargs: dict) -> str:
    """A kernel variant as the hook sees it: name and launch options, then its constexpr and specialized
    arguments by name (what a warm-up batch must match), then the argument types. Triton's own `repr` pairs
    the parameters with the wrong part of the cache key (3.6 to 3.9 print "(out_ptr: ()" and stop), so it is
    only used for the head."""
    head = str(hook_kwargs.get("repr", "?")).split("](", 1)[0]
    head = head + "]" if "[" in head else head
    details = hook_kwargs.get("compile") or {}
    fn = getattr(hook_kwargs.get("fn"), "jit_function", None)
    names = list(getattr(fn, "arg_names", None) or [])

    def name(key) -> str:
        index = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        return names[index] if isinstance(index, int) and 0 <= index < len(names) else str(key)

    constants = details.get("constants") or {}
    consts = ", ".join(f"{name(k)}={v}" for k, v in constants.items())
    configs = details.get("configs") or [{}]
    attrs = configs[0] if isinstance(configs[0], dict) else {}
    special = ", ".join(f"{name(k)}:" + "/".join(f"{a[0].split('.')[-1]}={a[1]}" if isinstance(a, (list, tuple))
                                                 and len(a) == 2 else str(a) for a in v)
                        for k, v in attrs.items())
    signature = details.get("signature") or {}
    types = ", ".join(f"{k}: {v}" for k, v in signature.items() if v != "constexpr") \
        if isinstance(signature, dict) else str(signature)
    return f"{head} constexprs ({consts}) specialized ({special}) arguments ({types})"


def phase_compiles() -> int:
    """How many kernel variants compiled during start-up phases (see the module docstring)."""
    return len(_phase_seen)


def watch_runtime_compiles(phase: str | None = None) -> bool:
    """Install the watch (idempotent; `phase` names the start-up phase now running, None: serving);
    False when this Triton offers no compile hook."""
    global _installed, _phase
    _phase = phase
    if _installed:
        return True
    try:
        from triton import knobs
    except ImportError:
        return False
    runtime = getattr(knobs, "runtime", None)
    if runtime is None or not hasattr(runtime, "jit_cache_hook"):
        return False
    previous = runtime.jit_cache_hook

    def hook(**kwargs):
        if not kwargs.get("is_manual_warmup"):  # run(warmup=True): the compile pass's own compiles
            record_compile(describe_variant(kwargs))
        return previous(**kwargs) if previous is not None else None

    runtime.jit_cache_hook = hook
    _installed = True
    return True
