"""Nagle's algorithm is off on the server's connections (http_protocol.set_nodelay, api_server.bind_socket).

With it on, a response written in two pieces (headers, then body) held the body until the client's delayed ACK
of the headers: 44 ms per JSON response on a kept-alive connection instead of 0.3 ms (session 20). These tests
read the option on the server side of real loopback connections, in process: no timing is asserted.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from uvicorn.server import ServerState

from pagoda.entrypoints.openai.api_server import bind_socket
from pagoda.entrypoints.openai.http_protocol import PagodaH11Protocol


async def _app(scope, receive, send):  # a minimal ASGI app: 200 with a JSON body
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _server_side_nodelay(listening: socket.socket, make_protocol) -> int:
    """Serve one GET on `listening` with protocols from `make_protocol(connections)`; the server side's TCP_NODELAY."""

    async def main() -> int:
        connections: list = []
        listening.listen(8)
        server = await asyncio.get_running_loop().create_server(lambda: make_protocol(connections), sock=listening)
        try:
            reader, writer = await asyncio.open_connection(*listening.getsockname()[:2])
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            option = connections[0].transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                                   socket.TCP_NODELAY)
            writer.close()
            return option
        finally:
            server.close()

    return asyncio.run(main())


def _h11(connections: list) -> PagodaH11Protocol:
    config = uvicorn.Config(_app, http=PagodaH11Protocol, lifespan="off", log_level="warning")
    config.load()
    protocol = PagodaH11Protocol(config=config, server_state=ServerState(), app_state={})
    connections.append(protocol)
    return protocol


class _Plain(asyncio.Protocol):
    def __init__(self, connections: list) -> None:
        connections.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


def test_bind_socket_hands_out_connections_with_nodelay():
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP: the listening socket is made so."""
    assert _server_side_nodelay(bind_socket("127.0.0.1", 0), _Plain)


def test_protocol_sets_nodelay_where_asyncio_does_not():
    """A listening socket made with proto 0 (as uvicorn's own bind does) gets no TCP_NODELAY from asyncio; the
    protocol sets it on each connection."""
    proto0 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    proto0.bind(("127.0.0.1", 0))
    assert not _server_side_nodelay(proto0, _Plain)  # the premise: asyncio leaves Nagle on here
    proto0 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    proto0.bind(("127.0.0.1", 0))
    assert _server_side_nodelay(proto0, _h11)
