"""A real `credgate serve --http` process on a loopback port, and the SDK's HTTP clients against it.

`start_server` starts one (and waits until it listens); `connect_over_http` is the SDK's `Client` over Streamable
HTTP or SSE with a bearer token; every byte such a client receives lands in a `Received`, for the leak scans.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.support.gateway import World, credgate_env

MODERN = "2026-07-28"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
START_TIMEOUT = 20.0


# -- every byte received ---------------------------------------------------------------------------


class _TeeStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, buffer: bytearray) -> None:
        self._inner = inner
        self._buffer = buffer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._buffer.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class TeeTransport(httpx2.AsyncBaseTransport):
    """A real HTTP transport that keeps a copy of every response: status, headers and body bytes."""

    def __init__(self, received: Received) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._received = received

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        buffer = self._received.new_response(response)
        response.stream = _TeeStream(response.stream, buffer)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Received:
    """One buffer per response, so a canary split across chunks is still found."""

    responses: list[bytearray] = field(default_factory=list)

    def new_response(self, response: httpx2.Response) -> bytearray:
        head = f"HTTP {response.status_code}\n" + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        buffer = bytearray(head.encode("latin-1") + b"\n")
        self.responses.append(buffer)
        return buffer

    def text(self) -> str:
        return "\n".join(bytes(b).decode("utf-8", errors="replace") for b in self.responses)

    def http_client(self, token: str | None = None, timeout: float = 30.0) -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx2.AsyncClient(headers=headers, timeout=timeout, transport=TeeTransport(self))

    def sse_factory(
        self,
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, transport=TeeTransport(self))


# -- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class Server:
    """A running `credgate serve --http` process."""

    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    stdout_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return self.base + "/mcp"

    @property
    def sse_url(self) -> str:
        return self.base + "/sse"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    world: World,
    folder: Path,
    *extra: str,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
) -> Server:
    """Start `credgate serve --http` on a loopback port (a free one unless given) and, unless told not to,
    wait (bounded) until it accepts connections. `home`: a data folder other than the world's; `env`: more
    environment. Its output is appended to serve-PORT.err/.out in `folder`, across restarts."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    stderr_path, stdout_path = folder / f"serve-{port}.err", folder / f"serve-{port}.out"
    with stderr_path.open("ab") as err, stdout_path.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mcp_credgate",
                "serve",
                "--http",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--home",
                str(home or world.settings.home),
                "--tools-dir",
                str(world.tools_dir),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**credgate_env(world.settings), **(env or {})},
            cwd=folder,
        )
    server = Server(process, port, stderr_path, stdout_path)
    if wait:
        wait_listening(server)
    return server


def wait_listening(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited with {server.process.returncode}:\n{server.stderr()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                message = f"the server did not listen within {START_TIMEOUT} s:\n{server.stderr()}"
                raise AssertionError(message) from None
            time.sleep(0.05)


@asynccontextmanager
async def connect_over_http(
    server: Server, token: str, transport: str, received: Received, mode: str = "auto"
) -> AsyncIterator[Client]:
    """The SDK's Client over `streamable` HTTP (/mcp) or `sse` (/sse), sending `token` as a bearer token."""
    if transport == "streamable":
        http = received.http_client(token)
        async with http, Client(streamable_http_client(server.mcp_url, http_client=http), mode=mode) as client:
            yield client
    else:
        sse = sse_client(
            server.sse_url,
            headers={"Authorization": f"Bearer {token}"},
            httpx_client_factory=received.sse_factory,
        )
        async with Client(sse, mode=mode) as client:
            yield client


def modern_call(tool: str, arguments: dict[str, Any], request_id: int = 1) -> tuple[dict[str, str], bytes]:
    """Headers and body of a stand-alone tools/call of the 2026-07-28 protocol, as the SDK's client sends it."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta},
    }
    headers = {**JSON_HEADERS, "Mcp-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool}
    return headers, json.dumps(body).encode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
