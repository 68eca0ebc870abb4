"""A remote upstream's POST responses give their connection back when closed early (handlers/keepalive.py).

A small HTTP/1.1 server answers each POST with an event stream, as a Streamable HTTP server does, and counts the
connections it accepts; the client reads the first event and closes the response, as the SDK's client does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream

from mcp_credgate.handlers.keepalive import REST_BYTES, REST_SECONDS, KeepAliveTransport

pytestmark = [pytest.mark.anyio, pytest.mark.no_store]

Ending = Literal["ends", "hangs", "floods"]
EVENT = b'event: message\ndata: {"jsonrpc": "2.0", "id": 1, "result": {}}\n\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class EventServer:
    """Answers every POST with one event; then ends the stream, keeps it open, or sends more than REST_BYTES."""

    ending: Ending
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def serve(self, stream: SocketStream) -> None:
        self.connections += 1
        buffer = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    while len(buffer) < length:
                        buffer += await stream.receive()
                    self.requests.append(buffer[:length])
                    buffer = buffer[length:]
                    await self.answer(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    async def answer(self, stream: SocketStream) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        await stream.send(head + chunk(EVENT))
        if self.ending == "hangs":
            await anyio.sleep_forever()
        if self.ending == "floods":
            filler = b": " + b"x" * 8190 + b"\n\n"
            for _ in range(REST_BYTES // len(filler) + 8):
                await stream.send(chunk(filler))
            await anyio.sleep_forever()
        await stream.send(b"0\r\n\r\n")


@asynccontextmanager
async def event_server(ending: Ending) -> AsyncIterator[tuple[EventServer, str]]:
    server = EventServer(ending)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.serve)
        yield server, f"http://127.0.0.1:{port}/mcp"
        tg.cancel_scope.cancel()


def keepalive_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=KeepAliveTransport(httpx2.AsyncHTTPTransport(trust_env=False)), timeout=10)


async def first_event(client: httpx2.AsyncClient, url: str, n: int) -> bytes:
    """POST, read up to the first event, close the response (the SDK's client, once its answer came)."""
    async with client.stream("POST", url, json={"jsonrpc": "2.0", "id": n, "method": "tools/call"}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                return line.encode()
    raise AssertionError("no event")


async def test_a_post_whose_stream_ends_after_its_answer_keeps_one_connection() -> None:
    with anyio.fail_after(10):
        async with event_server("ends") as (server, url), keepalive_client() as client:
            answers = [await first_event(client, url, n) for n in range(5)]

    assert all(b'"result"' in answer for answer in answers)
    assert len(server.requests) == 5
    assert server.connections == 1


async def test_without_it_each_such_post_costs_a_connection() -> None:
    """What the transport is for: the same exchange on a plain client opens a connection per request."""
    with anyio.fail_after(10):
        async with event_server("ends") as (server, url), httpx2.AsyncClient(timeout=10) as client:
            for n in range(3):
                await first_event(client, url, n)

    assert server.connections == 3


@pytest.mark.parametrize("ending", ["hangs", "floods"])
async def test_a_stream_that_does_not_end_is_dropped_within_the_bound(ending: Ending) -> None:
    with anyio.fail_after(10):
        async with event_server(ending) as (server, url), keepalive_client() as client:
            began = time.monotonic()
            first = await first_event(client, url, 1)
            closed_after = time.monotonic() - began
            second = await first_event(client, url, 2)

    assert b'"result"' in first and b'"result"' in second
    assert closed_after < REST_SECONDS + 2  # a bounded wait, never the stream's (endless) life
    assert server.connections == 2  # the first connection was dropped, not reused mid-stream


async def test_a_get_stream_is_closed_at_once() -> None:
    """A GET is the upstream's own long-lived stream: closing it reads nothing more."""

    async def serve(stream: SocketStream) -> None:
        async with stream:
            await stream.receive()
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            await stream.send(head + chunk(EVENT))
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tg, keepalive_client() as client:
            tg.start_soon(listener.serve, serve)
            async with client.stream("GET", f"http://127.0.0.1:{port}/mcp") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break
                began = time.monotonic()
            took = time.monotonic() - began
            tg.cancel_scope.cancel()

    assert took < REST_SECONDS
