"""The stdio wire read and written on the event loop, when the client connected us by pipes or sockets.

The SDK's `stdio_server` reads each line and writes each message (then flushes) in a worker thread: three
hops to a thread and back per call, which cost about as much as the rest of a relayed call. An MCP client
starts its server with pipes; on those the loop can wait for the descriptor itself. `pipe_wire()` gives
`stdio_server` such a stdin and stdout, or None when fd 0 or fd 1 is something else (a terminal, a file):
then the SDK's own threaded wire serves, unchanged.

While the wire is open, fd 0 reads the null device and fd 1 writes to stderr, as under the SDK's own claim:
a handler's or a child's stray output never lands between two messages, and children read no agent input.
Both are restored on exit. What is read is decoded as UTF-8 with errors replaced, line by line, as the SDK's
wire does.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

__all__ = ["READ_SIZE", "PipeReader", "PipeWriter", "pipe_wire"]

READ_SIZE = 64 * 1024


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class PipeReader(anyio.AsyncFile[str]):
    """Lines of a non-blocking descriptor, read when the loop sees it readable."""

    def __init__(self, fd: int) -> None:
        super().__init__(io.StringIO())  # the SDK's type; nothing is read through it
        self._fd = fd
        self._buffer = bytearray()
        self._searched = 0  # the buffer holds no newline before this offset
        self._ended = False

    async def readline(self) -> str:
        """The next line with its newline, the last one without; "" at the end."""
        while True:
            end = self._buffer.find(b"\n", self._searched)
            if end >= 0:
                return self._take(end + 1)
            self._searched = len(self._buffer)
            if self._ended:
                return self._take(len(self._buffer))
            await anyio.wait_readable(self._fd)
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                continue
            if data:
                self._buffer += data
            else:
                self._ended = True

    def _take(self, size: int) -> str:
        line = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._searched = 0
        return line.decode("utf-8", errors="replace")


class PipeWriter(anyio.AsyncFile[str]):
    """Text written whole to a non-blocking descriptor, waiting on the loop while the pipe is full."""

    def __init__(self, fd: int) -> None:
        super().__init__(io.StringIO())  # the SDK's type; nothing is written through it
        self._fd = fd

    async def write(self, b: str) -> int:
        data = memoryview(b.encode("utf-8"))
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
        return len(b)

    async def flush(self) -> None:
        """Nothing is buffered: every write went to the descriptor."""


def _claim(fd: int, diversion: int) -> int:
    """A private, non-blocking copy of `fd`; `fd` itself now points where `diversion` does."""
    wire = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.set_blocking(wire, False)
    os.dup2(diversion, fd)
    return wire


def _restore(fd: int, wire: int) -> None:
    os.set_blocking(wire, True)
    os.dup2(wire, fd)
    os.close(wire)


@asynccontextmanager
async def pipe_wire() -> AsyncIterator[tuple[PipeReader, PipeWriter] | None]:
    """stdin and stdout for `stdio_server`, read and written on the loop; None when either is no pipe."""
    if not (_is_pipe(0) and _is_pipe(1)):
        yield None
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        wire_in = _claim(0, null)
    finally:
        os.close(null)
    try:
        wire_out = _claim(1, 2)
    except BaseException:
        _restore(0, wire_in)
        raise
    try:
        yield PipeReader(wire_in), PipeWriter(wire_out)
    finally:
        _restore(1, wire_out)
        _restore(0, wire_in)
