"""Benchmark: calls to a Streamable-HTTP MCP server that wants a bearer token, straight with the SDK's client and
through credgate, side by side in one run.

The upstream is `bare_http_server.py` (the SDK's low-level server behind its bearer check) on 127.0.0.1. credgate
(`serve` over stdio, as an agent's client starts it) holds the token as a stored credential and sends it as the
upstream's Authorization header; it relays each call (argument check, credential resolution, redaction, audit).
The direct client talks to the upstream in the SDK's default mode (2026-07-28, as credgate's upstream session
does since issue 24) and in the handshake protocol (`mode="legacy"`, as it did before). All paths run at once and
calls alternate one by one.

    python bench/bench_upstream_http.py [--calls 1000] [--before SRC]

`--before SRC` adds a second credgate, run from another source tree's `src` (e.g. an earlier commit's, from
`git archive`), on the same store: a before/after pair measured side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
from bench_http import free_port, running
from bench_stdio import HERE, print_table
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

TOKEN = "tok-bench-http-0123456789"
TOOL = """
name = "up"
description = "A remote upstream MCP server."
[credential]
type = "uptoken"
fields = [{{ name = "token", kind = "token" }}]
[handler]
kind = "mcp"
url = "{url}"
headers = {{ Authorization = "Bearer {{cred.token}}" }}
"""
DIRECT, DIRECT_LEGACY, CREDGATE, BEFORE = "direct", "direct, handshake", "credgate", "credgate, before"


def setup(home: Path, url: str) -> list[str]:
    """A store with the upstream's token bound for group `bench`; returns the `serve` command line."""
    tools = home / "tools.d"
    tools.mkdir(parents=True)
    (tools / "up.toml").write_text(TOOL.format(url=url))
    base = [sys.executable, "-m", "mcp_credgate"]
    common = ["--home", str(home), "--tools-dir", str(tools)]

    def run(*args: str, stdin: str | None = None) -> None:
        subprocess.run([*base, *args, *common], input=stdin, text=True, check=True, stdout=subprocess.DEVNULL)

    run("init")
    run("cred", "add", "up-token", "--type", "uptoken", "--from-json", "-", stdin=f'{{"token": "{TOKEN}"}}')
    run("tools", "--discover-with", "up-token")
    run("group", "add", "bench")
    run("group", "allow", "bench", "up.*")
    run("bind", "bench", "up", "up-token")
    return [*base, "serve", "--group", "bench", *common]


def http_client(url: str, mode: Literal["auto", "legacy"]) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode=mode)


async def measure(clients: dict[str, tuple[Client, str]], calls: int) -> dict[str, list[float]]:
    """Every client open at once; calls alternate between them one by one, so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in clients}
    for client, tool in clients.values():
        for _ in range(50):  # warm-up
            await client.call_tool(tool, {"text": "warm"})
    for i in range(calls):
        for name, (client, tool) in clients.items():
            start = time.perf_counter()
            result = await client.call_tool(tool, {"text": f"hello {i}"})
            times[name].append(time.perf_counter() - start)
            assert not result.is_error, result
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per path (default 1000)")
    parser.add_argument("--before", type=Path, help="another source tree's src: a second credgate, run from it")
    opts = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    upstream = [sys.executable, str(HERE / "bare_http_server.py"), str(port), TOKEN]
    with tempfile.TemporaryDirectory() as tmp, running(upstream, {"PYTHONPATH": str(HERE)}, port):
        serve = setup(Path(tmp) / "home", url)
        async with AsyncExitStack() as stack:
            devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
            gateway = stdio_client(StdioServerParameters(command=serve[0], args=serve[1:]), errlog=devnull)
            clients: dict[str, tuple[Client, str]] = {}
            clients[DIRECT] = (await stack.enter_async_context(http_client(url, "auto")), "echo")
            clients[DIRECT_LEGACY] = (await stack.enter_async_context(http_client(url, "legacy")), "echo")
            clients[CREDGATE] = (await stack.enter_async_context(Client(gateway)), "up_echo")
            if opts.before is not None:
                env = {"PYTHONPATH": str(opts.before.resolve())}
                before = stdio_client(StdioServerParameters(command=serve[0], args=serve[1:], env=env), errlog=devnull)
                clients[BEFORE] = (await stack.enter_async_context(Client(before)), "up_echo")
            results = await measure(clients, opts.calls)
    print(f"Streamable-HTTP upstream with a bearer token, {opts.calls} sequential tools/call each, alternating")
    figures: dict[str, Any] = print_table(results, "path")
    print(f"throughput ratio credgate/direct: {figures[CREDGATE][0] / figures[DIRECT][0]:.2f} ", end="")
    print(f"(credgate/direct in the handshake protocol: {figures[CREDGATE][0] / figures[DIRECT_LEGACY][0]:.2f})")
    if BEFORE in figures:
        print(f"throughput ratio credgate before/direct: {figures[BEFORE][0] / figures[DIRECT][0]:.2f}, ", end="")
        print(f"credgate/credgate before: {figures[CREDGATE][0] / figures[BEFORE][0]:.2f}")


if __name__ == "__main__":
    os.environ.pop("CREDGATE_HOME", None)
    anyio.run(main)
