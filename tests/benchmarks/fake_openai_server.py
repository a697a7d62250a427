"""A tiny OpenAI-compatible streaming server (starlette + uvicorn) on 127.0.0.1 for the serve benchmark tests.

It streams `max_tokens` tokens per completion: the first after `first_delay` seconds, then one every
`token_delay` seconds, with a final usage chunk, and records every request body it receives.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


class FakeServer:
    def __init__(self, first_delay: float = 0.2, token_delay: float = 0.05, send_usage: bool = True):
        self.first_delay, self.token_delay, self.send_usage = first_delay, token_delay, send_usage
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        app = Starlette(routes=[Route("/v1/models", self.models), Route("/v1/completions", self.completions, methods=["POST"]),
                                Route("/v1/chat/completions", self.completions, methods=["POST"])])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def completions(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.bodies.append(body)
        n = int(body["max_tokens"])
        chat = "messages" in body

        async def stream():
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                for i in range(n):
                    await asyncio.sleep(self.first_delay if i == 0 else self.token_delay)
                    finish = "length" if i == n - 1 else None
                    choice = ({"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": finish} if chat else
                              {"index": 0, "text": f" w{i}", "finish_reason": finish})
                    chunk = {"id": "c", "object": "text_completion", "model": "fake-model", "choices": [choice]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                if self.send_usage:
                    prompt_len = 1 if chat else len(body["prompt"])
                    usage = {"prompt_tokens": prompt_len, "completion_tokens": n, "total_tokens": prompt_len + n}
                    yield f"data: {json.dumps({'id': 'c', 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                self.in_flight -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
