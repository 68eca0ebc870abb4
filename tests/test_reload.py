"""SIGHUP re-reads tools.d: all or nothing, a broken file keeps the running configuration (issue 7)."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.gateway import World, connect, credgate_env, python_tool

pytestmark = pytest.mark.anyio

ECHO = python_tool("echo", "mcp_credgate.examples:echo", properties='properties.text = { type = "string" }')
CLOCK = python_tool("clock", "mcp_credgate.examples:utc_now")


async def test_a_reload_adds_new_tools_and_a_broken_file_keeps_the_running_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World.create(tmp_path, {"echo": ECHO})
    world.store.add_group("g")
    world.allow("g", "echo")
    async with world.gateway() as gw, connect(gw, "g") as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["echo"]

        (world.tools_dir / "clock.toml").write_text(CLOCK)
        world.store.allow("g", ["clock"])
        assert gw.reload()
        assert [t.name for t in (await client.list_tools()).tools] == ["clock", "echo"]
        assert not (await client.call_tool("clock", {})).is_error

        broken = world.tools_dir / "broken.toml"
        broken.write_text('name = "broken"\n[handler]\nkind = "http"\nurl = "https://{args.host}/x"\n')
        (world.tools_dir / "clock.toml").unlink()
        with caplog.at_level(logging.ERROR):
            assert not gw.reload()
        assert [t.name for t in (await client.list_tools()).tools] == ["clock", "echo"]  # nothing half-applied
        assert not (await client.call_tool("clock", {})).is_error
        assert f"{broken}: handler.url" in caplog.text
    world.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_sighup_reloads_a_running_http_server(tmp_path: Path) -> None:
    world = World.create(tmp_path, {"echo": ECHO})
    world.store.add_group("g")
    world.allow("g", "echo")
    common = ["--home", str(world.settings.home), "--tools-dir", str(world.tools_dir)]
    env = credgate_env(world.settings)
    added = subprocess.run(
        [sys.executable, "-m", "mcp_credgate", "agent", "add", "g", "a", "--json", *common],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    token = json.loads(added.stdout)["token"]
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "mcp_credgate", "serve", "--http", "--port", str(port), *common],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, log.read_text()
                time.sleep(0.05)

        async def listed() -> list[str]:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as c:
                return [t.name for t in (await c.list_tools()).tools]

        with anyio.fail_after(30):
            assert await listed() == ["echo"]
            (world.tools_dir / "clock.toml").write_text(CLOCK)
            world.store.allow("g", ["clock"])
            server.send_signal(signal.SIGHUP)
            while await listed() != ["clock", "echo"]:
                await anyio.sleep(0.1)
            assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=15)
        world.close()
    assert "reloaded the declarations: 2 tools" in log.read_text()
