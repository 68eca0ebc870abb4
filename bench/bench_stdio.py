"""Benchmark: credgate over stdio vs a bare `mcp` low-level server, side by side in one run.

Both serve an echo tool; credgate's needs an API-key credential, which it resolves, decrypts and
injects on every call, then redacts the output and queues an audit row. Both run at once, each with
its own SDK stdio client, and the calls alternate between them one by one (so machine noise and drift
hit both alike); throughput is calls per second of time spent waiting on that server.

    python bench/bench_stdio.py [--calls 2000] [--block 300] [--before SRC] [--equal-wire] [--budget]

Each runs twice: calls alternating one by one, then in blocks of 300 consecutive calls per server (one agent's
real pattern). `--before SRC` adds a third server: credgate run from another source tree's `src` (e.g. an
earlier commit's, from `git archive`), on the same store: a before/after pair measured side by side.
`--equal-wire` adds the bare server on credgate's stdio wire: credgate's own work per call, on an equal wire.
`--budget` adds credgate on a store of its own whose group has limits (calls per day and spend per month, the tool
costing 0.001): what counting each call against its limits costs, side by side with no limit set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = Path(__file__).resolve().parent
EQUAL = "bare, credgate's wire"
BUDGETED = "credgate, with limits"
TOOL = """
name = "echo"
description = "Echo the text back."
[input_schema]
type = "object"
required = ["text"]
properties.text = { type = "string" }
[credential]
type = "bench"
fields = [{ name = "api_key", kind = "api_key" }]
[handler]
kind = "python"
entrypoint = "bench_tools:echo"
"""


def setup_credgate(
    home: Path, extra_env: dict[str, str] | None = None, *, budget: bool = False
) -> tuple[list[str], dict[str, str]]:
    """A store (SQLite in `home`, or where `extra_env`'s CREDGATE_DATABASE_URL says) with the echo tool bound
    for group `bench`; returns the `serve` command line and the environment it needs."""
    tools = home / "tools.d"
    tools.mkdir(parents=True)
    (tools / "echo.toml").write_text(("cost = 0.001\n" if budget else "") + TOOL)
    env = {**os.environ, "PYTHONPATH": str(HERE), **(extra_env or {})}
    base = [sys.executable, "-m", "mcp_credgate"]
    common = ["--home", str(home), "--tools-dir", str(tools)]

    def run(*args: str, stdin: str | None = None) -> None:
        subprocess.run([*base, *args, *common], input=stdin, text=True, check=True, env=env, stdout=subprocess.DEVNULL)

    run("init")
    secret = '{"api_key": "sk-bench-0123456789abcdef"}'
    run("cred", "add", "bench-key", "--tool", "echo", "--from-json", "-", stdin=secret)
    run("group", "add", "bench")
    run("group", "allow", "bench", "echo")
    run("bind", "bench", "echo", "bench-key")
    if budget:
        run("budget", "set", "bench", "--calls", "100000000/day")
        run("budget", "set", "bench", "--spend", "1000000/month")
    return [*base, "serve", "--group", "bench", *common], {"PYTHONPATH": str(HERE), **(extra_env or {})}


async def measure(
    servers: dict[str, tuple[list[str], dict[str, str]]],
    calls: int,
    tool_names: dict[str, str] | None = None,
    block: int = 1,
) -> dict[str, list[float]]:
    """The servers run at once; calls alternate between them in blocks of `block` calls (one by one by default),
    so drift hits all alike. A block of consecutive calls is one agent's real pattern: the server's caches stay
    warm, where one by one each call finds them cold."""
    tool = {name: (tool_names or {}).get(name, "echo") for name in servers}
    times: dict[str, list[float]] = {name: [] for name in servers}
    async with AsyncExitStack() as stack:
        devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
        clients = {}
        for name, (argv, env) in servers.items():
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
            clients[name] = await stack.enter_async_context(Client(stdio_client(params, errlog=devnull)))
        for name, client in clients.items():
            for _ in range(50):  # warm-up
                await client.call_tool(tool[name], {"text": "warm"})
        for first in range(0, calls, block):
            for name, client in clients.items():
                for i in range(first, min(first + block, calls)):
                    start = time.perf_counter()
                    result = await client.call_tool(tool[name], {"text": f"hello {i}"})
                    times[name].append(time.perf_counter() - start)
                    assert not result.is_error, result
    return times


def summary(times: list[float]) -> tuple[float, float, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(times) / sum(times), statistics.median(times) * 1000, p99 * 1000


def print_table(results: dict[str, list[float]], heading: str = "server") -> dict[str, tuple[float, float, float]]:
    """Print calls/s, p50 and p99 per side; returns them."""
    width = max(18, *(len(n) + 2 for n in results))
    print(f"{heading:<{width}}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    figures = {}
    for name, times in results.items():
        figures[name] = rate, p50, p99 = summary(times)
        print(f"{name:<{width}}{rate:>10.0f}{p50:>10.3f}{p99:>10.3f}")
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per server (default 2000)")
    parser.add_argument("--block", type=int, default=300, help="consecutive calls per server in the second mode")
    parser.add_argument("--before", type=Path, help="another source tree's src: a second credgate, run from it")
    parser.add_argument("--equal-wire", action="store_true", help="add the bare server on credgate's stdio wire")
    parser.add_argument("--budget", action="store_true", help="add credgate with limits to count each call against")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        credgate_argv, credgate_env = setup_credgate(Path(tmp) / "home")
        servers = {
            "bare mcp server": ([sys.executable, str(HERE / "bare_server.py")], {}),
            "credgate serve": (credgate_argv, credgate_env),
        }
        if opts.equal_wire:
            servers[EQUAL] = ([sys.executable, str(HERE / "bare_server.py"), "--pipe-wire"], {})
        if opts.budget:
            servers[BUDGETED] = setup_credgate(Path(tmp) / "budgeted", budget=True)
        if opts.before is not None:
            before_env = {**credgate_env, "PYTHONPATH": f"{opts.before.resolve()}{os.pathsep}{HERE}"}
            servers["credgate, before"] = (credgate_argv, before_env)
        for block, mode in ((1, "alternating call by call"), (opts.block, f"in blocks of {opts.block} calls")):
            results = await measure(servers, opts.calls, block=block)
            print(f"stdio, {opts.calls} sequential tools/call each, {mode} between the servers")
            figures = print_table(results)
            bare = figures["bare mcp server"][0]
            print(f"throughput ratio credgate/bare: {figures['credgate serve'][0] / bare:.2f} (target >= 0.95)")
            if EQUAL in figures:
                same_wire = figures["credgate serve"][0] / figures[EQUAL][0]
                print(f"throughput ratio credgate/bare on the same wire: {same_wire:.2f}")
            if BUDGETED in figures:
                limited = figures[BUDGETED][0] / figures["credgate serve"][0]
                print(f"throughput ratio credgate with limits/without: {limited:.3f} (target >= 0.90)")
            if "credgate, before" in figures:
                before = figures["credgate, before"][0]
                print(f"throughput ratio credgate before/bare: {before / bare:.2f}, ", end="")
                print(f"credgate/credgate before: {figures['credgate serve'][0] / before:.2f}")


if __name__ == "__main__":
    anyio.run(main)
