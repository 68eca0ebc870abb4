"""What the fault suites (SQLite's and PostgreSQL's) share: a `credgate` command on a world's store, the check that
it was refused with one true line, and the clock tool called over Streamable HTTP."""

from __future__ import annotations

import subprocess
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.gateway import World, credgate_env, result_text
from tests.support.http_server import Server


def credgate(world: World, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`credgate ARGS` on the world's store, run after `prefix` (e.g. setpriv's command line)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "mcp_credgate", *world.cli_paths, *args],
        env=credgate_env(world.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_refused_saying(result: subprocess.CompletedProcess[str], words: str) -> None:
    """Exit 1, one `Error:` line holding `words`, no traceback, and never "not a credgate store"."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "not a credgate store" not in result.stderr + result.stdout and "Traceback" not in result.stderr


async def clock_calls(server: Server, token: str, n: int, timeout: float = 30) -> list[str]:
    """The text of `n` calls of the clock tool, one after the other, by the agent holding `token`."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    async with http, Client(streamable_http_client(server.mcp_url, http_client=http)) as client:
        return [result_text(await client.call_tool("clock", {})) for _ in range(n)]
