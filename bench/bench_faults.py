"""Benchmark: a gateway whose store cannot be written (a full disk) vs a healthy one, side by side in one run.

Two `credgate serve` over stdio, each on a SQLite store of its own on a tmpfs of its own: a healthy 64 MB one,
and a 4 MB one filled up once both gateways are serving and warm (issue 26). Calls alternate between them in
blocks; the full one keeps serving, its audit rows waiting in memory. At the end its disk gets room again, and
the rows written once it has are counted (every call must be there: 50 warm-up calls and `--calls`).

    sudo python bench/bench_faults.py [--calls 3000] [--block 300]

Needs root (it mounts the two tmpfs, unmounted at the end).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
from bench_stdio import print_table, setup_credgate
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_credgate.config import Settings
from mcp_credgate.store import Store

WARM_UP = 50
HEALTHY, FULL = "healthy store", "store on a full disk"


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def measure(
    servers: dict[str, tuple[list[str], dict[str, str]]], calls: int, block: int, full_disk: Path, log: Path
) -> dict[str, list[float]]:
    """Both gateways serving and warm, the small disk is filled; then calls alternate in blocks. The full
    disk's gateway logs to `log`."""
    times: dict[str, list[float]] = {name: [] for name in servers}
    async with AsyncExitStack() as stack:
        devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
        full_log = stack.enter_context(log.open("w"))
        clients = {}
        for name, (argv, env) in servers.items():
            errlog = full_log if name == FULL else devnull
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
            clients[name] = await stack.enter_async_context(Client(stdio_client(params, errlog=errlog)))
        for client in clients.values():
            for _ in range(WARM_UP):
                await client.call_tool("echo", {"text": "warm"})
        filler = full_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
        for first in range(0, calls, block):
            for name, client in clients.items():
                for i in range(first, min(first + block, calls)):
                    start = time.perf_counter()
                    result = await client.call_tool("echo", {"text": f"hello {i}"})
                    times[name].append(time.perf_counter() - start)
                    assert not result.is_error, result
        filler.unlink()
        time.sleep(15)  # the writer retries; the rest is flushed when the gateway stops
    return times


def audited(home: Path, tools: Path) -> int:
    settings = Settings(home=home, tools_dirs=(tools,), public_url="http://127.0.0.1:8765")
    with Store.open(settings, env={}) as store:
        return len(store.read_audit(tool="echo", limit=10**7))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per server (default 3000)")
    parser.add_argument("--block", type=int, default=300, help="consecutive calls per server before switching")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_faults: run as root (it mounts two tmpfs)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        tmpfs(Path(tmp) / "big", "64m") as big,
        tmpfs(Path(tmp) / "small", "4m") as small,
    ):
        servers = {HEALTHY: setup_credgate(big / "home"), FULL: setup_credgate(small / "home")}
        log = Path(tmp) / "full.log"
        results = await measure(servers, opts.calls, opts.block, small, log)
        print(f"stdio, {opts.calls} sequential tools/call each, in blocks of {opts.block} calls")
        figures = print_table(results, heading="store")
        print(f"throughput ratio full disk/healthy: {figures[FULL][0] / figures[HEALTHY][0]:.2f}")
        failed = "audit rows cannot be written" in log.read_text()
        print(f"the full disk's gateway logged that its audit rows could not be written: {'yes' if failed else 'NO'}")
        written = audited(small / "home", small / "home" / "tools.d")
        print(f"its audit rows written once it had room: {written} of {WARM_UP + opts.calls}")


if __name__ == "__main__":
    anyio.run(main)
