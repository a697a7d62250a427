"""Request-supplied chat templates, rendered in worker processes with a time, memory and size limit.

A Jinja render cannot be interrupted from another thread, and the sandboxed environment caps
`range()` only: `{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`
runs for minutes, and string arithmetic can fill memory. So a request's own template (accepted only
with --trust-request-chat-template, as in vLLM) never renders in the server process: it goes to one
of `workers` processes (template_worker.py, started on first use) and the server awaits the answer
without blocking the event loop.

What is guaranteed:
- A render that takes longer than `timeout_s` is answered with a 400 and its process is killed
  (SIGKILL) at that moment; the next request starts a fresh worker. So one template costs at most
  `timeout_s` of one CPU core, and /health and every other request keep being served meanwhile.
- A worker's memory is capped (`memory_bytes`, RLIMIT_AS): a template that builds huge strings gets
  a 400 (MemoryError) instead of growing the server.
- A rendered text longer than `max_output_chars` (what could ever fit in max_model_len tokens) is a
  400, decided in the worker, so a huge text is never sent back.
- At most `workers` renders run at once; a request that finds every worker busy waits at most
  `timeout_s` for one, then gets 503 + Retry-After.
- Workers never outlive the server: they exit at the end of their stdin, die with their parent
  (Linux), and end themselves (SIGALRM) shortly after a render overruns even if no kill comes.
What is not: the server's own template (--chat-template or the tokenizer's) is trusted and renders
in-process (on a thread for large inputs, offload.py) without these limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import sys
from typing import Any

from pagoda.entrypoints.openai.errors import RETRY_AFTER_S, APIError

logger = logging.getLogger(__name__)

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template_worker.py")
DEFAULT_WORKERS = 2
DEFAULT_MEMORY_BYTES = 1 << 30
START_TIMEOUT_S = 60.0  # importing transformers' template code in a fresh process: ~1 s


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def send(self, job: dict) -> None:
        data = json.dumps(job).encode("ascii")
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        await self.proc.stdin.drain()

    async def receive(self) -> dict:
        (size,) = struct.unpack(">I", await self.proc.stdout.readexactly(4))
        return json.loads(await self.proc.stdout.readexactly(size))

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()


class TemplateSandbox:
    def __init__(self, *, timeout_s: float, max_output_chars: int, workers: int = DEFAULT_WORKERS,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.timeout_s, self.max_output_chars = timeout_s, max_output_chars
        self.workers, self.memory_bytes = workers, memory_bytes
        self._idle: list[_Worker] = []
        self._slots: asyncio.Semaphore | None = None  # created on the loop that uses it

    async def render(self, job: dict) -> str:
        """The rendered text of `job` (see template_worker.py); APIError 400 for a template that fails,
        overruns or outgrows its limits, 503 when no worker frees up within the time limit."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except asyncio.TimeoutError:
            raise APIError("every chat-template renderer is busy; retry later", 503,
                           headers={"Retry-After": RETRY_AFTER_S}) from None
        try:
            worker = self._idle.pop() if self._idle else await self._start()
            reply = await self._call(worker, job)
        finally:
            self._slots.release()
        if "text" in reply:
            return reply["text"]
        if reply.get("value_error"):
            raise APIError(reply["error"], 400, "messages")
        raise APIError(f"the chat template failed to render: {reply['error']}", 400, "chat_template")

    async def _call(self, worker: _Worker, job: dict) -> dict:
        try:
            await worker.send(job)
            reply = await asyncio.wait_for(worker.receive(), self.timeout_s)
        except asyncio.TimeoutError:
            await worker.kill()
            logger.warning("a request's chat template ran past %.1f s; its renderer process was killed", self.timeout_s)
            raise APIError(f"the chat template took longer than {self.timeout_s:g} s to render "
                           "(--chat-template-render-timeout) and was stopped", 400, "chat_template") from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            await worker.kill()
            raise APIError("the chat template's renderer process died while rendering it (out of memory or time)",
                           400, "chat_template") from None
        except BaseException:  # cancelled (client gone): the render may still run, so the worker is not reused
            await asyncio.shield(worker.kill())
            raise
        self._idle.append(worker)
        return reply

    async def _start(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, WORKER_SCRIPT, str(self.memory_bytes), str(self.max_output_chars), str(self.timeout_s),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None)
        worker = _Worker(proc)
        try:
            ready = await asyncio.wait_for(worker.receive(), START_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            await worker.kill()
            raise APIError("the chat-template renderer process could not start; see the server log", 503,
                           headers={"Retry-After": RETRY_AFTER_S}) from None
        except BaseException:
            await asyncio.shield(worker.kill())
            raise
        if not ready.get("ready"):
            await worker.kill()
            raise APIError("the chat-template renderer process could not start; see the server log", 503)
        return worker

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for worker in idle:
            await worker.kill()
