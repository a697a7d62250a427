"""Tokenizer and template work off the event loop: large inputs go to a small thread pool.

Tokenizing, detokenizing and rendering the server's own chat template cost time linear in their
input (about 0.3 us per character for a fast tokenizer: a 30 MB prompt is ~10 s). Run on the event
loop, that time is stolen from every other request and from /health. So work on an input larger
than `INLINE_CHARS` runs on one of `THREADS` worker threads; smaller inputs run inline.

Why 2048 characters: a hop to a thread and back costs about 0.1 ms of latency (measured: 134 us per
round trip on the dev machine), which is what tokenizing ~300 characters costs; below 2048
characters the inline work stays under ~0.7 ms, less than one engine step, so the hop would add
latency without freeing the loop of anything that matters. Above it the work grows without bound
and the hop is noise.

Hugging Face fast tokenizers release the GIL while they encode (`encode_batch`, which transformers
uses for single texts too), so a worker thread tokenizes while the loop keeps serving; Jinja
rendering holds the GIL but yields it every few milliseconds (the interpreter's switch interval).

Invariants:
- The tokenizer is only read here (no truncation/padding state is set: truncation is done on the ids),
  so concurrent calls from the loop and the worker threads are safe.
- A cancelled caller (client gone) stops waiting at once; its thread finishes the bounded work it
  started and the result is dropped.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

INLINE_CHARS = 2048
THREADS = 2


class Offloader:
    def __init__(self, threads: int = THREADS, inline_chars: int = INLINE_CHARS) -> None:
        self.inline_chars = inline_chars
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pagoda-tokenizer")

    async def run(self, size: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), inline when `size` (characters or tokens of input) is small, else on a thread."""
        if size <= self.inline_chars:
            return fn(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
