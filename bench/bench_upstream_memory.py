"""Benchmark: memory of many upstream processes, and what `max_processes` saves and costs.

credgate's upstream pool (the one `credgate serve` runs) serves G groups, each with a credential of its own,
calling one stdio upstream (bench/upstream_echo.py, in its sandbox): one process per group unless the
declaration's `max_processes` caps them. Each group calls once (a warm-up: its process started, unless the
cap stops another for it), then for `--seconds` the calls go round-robin over the groups from a few concurrent
callers (every group keeps calling: the least kind pattern for a cap, since each call beyond it starts a
process), or with `--block N` N consecutive calls per group before the next (one agent's burst). Each cap
runs in a fresh process of its own, so one's memory does not colour the next's.

Printed per cap: calls/s; the gateway's RSS (this benchmark's pool process: the pool, its sessions and relays,
with the harness's small share) before the first call and at its peak; the upstream processes' RSS and PSS
summed over the whole tree under it (bubblewrap's own processes included), peak and at the end, sampled
from /proc every 0.2 s; and the most processes seen alive at once.

    python bench/bench_upstream_memory.py [--groups 50] [--seconds 15] [--concurrency 8] [--block 1]
                                          [--caps none,16,4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from bench_stdio import HERE

from mcp_credgate.config import Settings
from mcp_credgate.credential import Credential
from mcp_credgate.declarations import McpHandler
from mcp_credgate.handlers.upstream import upstream_pool
from mcp_credgate.isolation import UpstreamScope
from mcp_credgate.sandbox import SandboxPolicy

PROC = Path("/proc")
UPSTREAM = HERE / "upstream_echo.py"


def _field_kb(pid: int, file: str, name: str) -> int:
    try:
        for line in (PROC / str(pid) / file).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # gone meanwhile, or not ours to read
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def upstream_figures(root: int) -> tuple[int, int, int]:
    """The upstream processes' total RSS and PSS (kB) under `root`, and how many of them are the upstream."""
    pids = descendants(root)
    servers = 0
    for pid in pids:
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
            servers += argv[1:2] == [str(UPSTREAM).encode()]  # not bubblewrap's process that holds it
        except OSError:
            pass
    rss = sum(_field_kb(p, "status", "VmRSS") for p in pids)
    pss = sum(_field_kb(p, "smaps_rollup", "Pss") for p in pids)
    return rss, pss, servers


async def one_cap(
    cap: int | None, groups: int, seconds: float, concurrency: int, block: int, state: Path
) -> dict[str, Any]:
    """Run the load under one cap in this process; the figures as a dict."""
    handler = McpHandler.model_validate(
        {
            "kind": "mcp",
            "command": sys.executable,
            "args": [str(UPSTREAM)],
            "env": {"UPSTREAM_TOKEN": "{cred.token}"},
            "sandbox": {"read": [str(UPSTREAM)]},
            "timeout": 60,
            **({"max_processes": cap} if cap is not None else {}),
        }
    )
    credentials = [
        Credential(f"tok-{i}", "uptoken", {"token": f"tok-bench-{i:04d}-0123456789"}, frozenset({"token"}))
        for i in range(groups)
    ]
    me = os.getpid()
    gateway_before = _field_kb(me, "status", "VmRSS")
    peak = {"gateway": gateway_before, "rss": 0, "pss": 0, "servers": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss, servers = upstream_figures(me)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            peak["servers"] = max(peak["servers"], servers)
            peak["gateway"] = max(peak["gateway"], _field_kb(me, "status", "VmRSS"))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    policy = SandboxPolicy.of(Settings.resolve(env={"CREDGATE_STATE_DIR": str(state)}))
    next_call, failed, until = 0, 0, 0.0

    async def caller(last: int | None) -> None:
        nonlocal next_call, failed
        while (next_call < last) if last is not None else (time.perf_counter() < until):
            i = (next_call // block) % groups
            next_call += 1
            scope = UpstreamScope("up", credentials[i].name, f"group-{i}")
            result = await pool.call(scope, handler, "echo", {"text": f"hello {i}"}, credentials[i])
            failed += result.is_error

    async def load(last: int | None) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(caller, last)

    sampler.start()
    async with upstream_pool(sandbox=policy) as pool:
        await load(groups * block)  # warm-up: every group calls (its process started, unless capped)
        next_call, began = 0, time.perf_counter()
        until = began + seconds
        await load(None)
        elapsed = time.perf_counter() - began
        end_rss, end_pss, end_servers = upstream_figures(me)
    done.set()
    sampler.join()
    return {
        "cap": cap,
        "calls_per_s": next_call / elapsed,
        "failed": failed,
        "gateway_before_kb": gateway_before,
        "gateway_peak_kb": peak["gateway"],
        "upstream_peak_rss_kb": peak["rss"],
        "upstream_peak_pss_kb": peak["pss"],
        "upstream_end_rss_kb": end_rss,
        "upstream_end_pss_kb": end_pss,
        "most_alive": peak["servers"],
        "alive_at_end": end_servers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=50, help="groups, each with its own credential (default 50)")
    parser.add_argument("--seconds", type=float, default=15, help="seconds of calls per cap (default 15)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent callers (default 8)")
    parser.add_argument("--block", type=int, default=1, help="consecutive calls per group (default 1: round-robin)")
    parser.add_argument("--caps", default="none,16,4", help="max_processes values, none = no limit")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one cap, print its figures as JSON
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if opts.one is not None:
            cap = None if opts.one == "none" else int(opts.one)
            figures = anyio.run(one_cap, cap, opts.groups, opts.seconds, opts.concurrency, opts.block, Path(tmp))
            print(json.dumps(figures))
            return
        rows = []
        for text in opts.caps.split(","):
            argv = [sys.executable, __file__, "--one", text, "--groups", str(opts.groups)]
            argv += ["--seconds", str(opts.seconds), "--concurrency", str(opts.concurrency), "--block", str(opts.block)]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    pattern = "round-robin over the groups" if opts.block == 1 else f"in blocks of {opts.block} per group"
    print(
        f"stdio upstream in its sandbox, {opts.groups} groups each with its own credential, {opts.seconds:g} s of "
        f"calls {pattern} from {opts.concurrency} concurrent callers, after each group's first; RSS/PSS in MB"
    )
    head = ("max_processes", "calls/s", "most alive", "gw RSS before", "gw RSS peak", "up RSS peak", "up PSS peak")
    print("".join(f"{h:>15}" for h in head))
    for r in rows:
        cells = [
            "none" if r["cap"] is None else str(r["cap"]),
            f"{r['calls_per_s']:.1f}",
            str(r["most_alive"]),
            f"{r['gateway_before_kb'] / 1024:.1f}",
            f"{r['gateway_peak_kb'] / 1024:.1f}",
            f"{r['upstream_peak_rss_kb'] / 1024:.1f}",
            f"{r['upstream_peak_pss_kb'] / 1024:.1f}",
        ]
        print("".join(f"{c:>15}" for c in cells) + (f"   ({r['failed']} failed)" if r["failed"] else ""))


if __name__ == "__main__":
    os.environ.pop("CREDGATE_HOME", None)
    main()
