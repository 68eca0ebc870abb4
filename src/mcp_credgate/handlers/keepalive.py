"""An HTTP transport that lets a remote upstream's connection serve the next request.

The SDK's Streamable HTTP client reads a POST's event stream up to the JSON-RPC response it waits for, then
closes the response. The upstream ends that stream right after the response, but the end has not been read
yet: the connection is dropped, and every call to the upstream pays for a new TCP connection (and the
server's set-up of one). `KeepAliveTransport` reads what is left of a POST's response when it is closed,
bounded in time and size, so the connection goes back to the client's pool. It changes no byte that is sent
or read: whatever is left is discarded, as closing would have. The pool is the one client's: an upstream
session's connections carry its own credential's headers and serve no other session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx2

__all__ = ["REST_BYTES", "REST_SECONDS", "KeepAliveTransport"]

REST_SECONDS = 0.25  # how long a closed POST response may take to end before its connection is dropped
REST_BYTES = 64 * 1024  # how much of it is read, at most, before the connection is dropped


class _Rest(httpx2.AsyncByteStream):
    """A response body whose remainder is read to its end when it is closed (see the module's docstring)."""

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._parts: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._parts = parts = aiter(self._inner)
        async for part in parts:
            yield part

    async def aclose(self) -> None:
        try:
            if self._parts is not None:
                await _read_rest(self._parts)
        finally:
            await self._inner.aclose()


async def _read_rest(parts: AsyncIterator[bytes]) -> None:
    """Read a body to its end, within REST_SECONDS and REST_BYTES; a body that does not end by then, or
    breaks, leaves its connection to be dropped by the close that follows."""
    read = 0
    with anyio.move_on_after(REST_SECONDS):
        try:
            async for part in parts:
                read += len(part)
                if read > REST_BYTES:
                    return
        except httpx2.TransportError:
            return


class KeepAliveTransport(httpx2.AsyncBaseTransport):
    """`httpx2.AsyncHTTPTransport` whose POST responses end their reading when closed (the module's docstring)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if request.method != "POST" or not isinstance(response.stream, httpx2.AsyncByteStream):
            return response
        response.stream = _Rest(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
