"""The stdio wire read and written on the event loop (serving/pipes.py), on pipes of the test's own."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest

from mcp_credgate.serving.pipes import PipeReader, PipeWriter

pytestmark = [pytest.mark.anyio, pytest.mark.no_store]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


async def test_lines_come_whole_however_they_were_split(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    reader = PipeReader(read_end)

    async def feed() -> None:
        for part in (b'{"a"', b": 1}\n{", b'"b": "\xc3', b'\xa9"}\n\n', b"\xff last"):
            os.write(write_end, part)
            await anyio.sleep(0.01)
        os.close(write_end)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            lines = [line async for line in reader]

    assert lines == ['{"a": 1}\n', '{"b": "é"}\n', "\n", "\ufffd last"]
    assert await reader.readline() == ""


async def test_a_write_larger_than_the_pipe_arrives_whole_and_in_order(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    writer = PipeWriter(write_end)
    messages = [f"{n:06d}" + "é" * 40_000 + "\n" for n in range(8)]  # 80 kB each: past a pipe's 64 kB
    received = bytearray()

    def drain() -> None:
        os.set_blocking(read_end, True)
        while chunk := os.read(read_end, 4096):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    with anyio.fail_after(20):
        for message in messages:
            await writer.write(message)
            await writer.flush()
    os.close(write_end)
    await anyio.to_thread.run_sync(reader.join)

    assert received.decode("utf-8") == "".join(messages)
