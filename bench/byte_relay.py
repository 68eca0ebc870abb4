"""The floor of any relay process: bytes copied from stdin to an upstream's stdin and from its stdout to stdout,
nothing read into messages.

    python bench/byte_relay.py COMMAND [ARG...]    (the upstream's command line)

An MCP relay must at least do this; against the upstream called directly it prices the extra process and its two
extra pipe hops alone (`bench_upstream.py`)."""

from __future__ import annotations

import asyncio
import sys


async def copy(reader: asyncio.StreamReader, write: asyncio.StreamWriter | None) -> None:
    out = sys.stdout.buffer
    while chunk := await reader.read(65536):
        if write is None:
            out.write(chunk)
            out.flush()
        else:
            write.write(chunk)
            await write.drain()
    if write is not None:
        write.close()


async def main() -> None:
    upstream = await asyncio.create_subprocess_exec(
        *sys.argv[1:], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert upstream.stdin is not None and upstream.stdout is not None
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await asyncio.gather(copy(stdin, upstream.stdin), copy(upstream.stdout, None))


if __name__ == "__main__":
    asyncio.run(main())
