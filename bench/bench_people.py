"""Benchmark: a personal tool against the same tool shared, over stdio, side by side in one run.

One store, the echo tool of `bench_stdio.py` needing an API key: group `bench` allows it shared (its binding
serves every agent), group `people` allows it personal, with member alice's own key bound; `serve --group
people --user alice` acts for her. The two servers (and a bare `mcp` server, for scale) run at once and the calls
alternate between them one by one: the personal call's extra work (the user's membership and personal binding,
read once per change of the store like any binding) is the difference.

    python bench/bench_people.py [--calls 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from bench_stdio import HERE, measure, print_table, setup_credgate

SHARED, PERSONAL = "credgate, shared tool", "credgate, personal tool"


def add_personal_group(home: Path, env: dict[str, str]) -> list[str]:
    """Group `people` with the echo tool personal and alice's key bound; returns its `serve` command line."""
    tools = home / "tools.d"
    base = [sys.executable, "-m", "mcp_credgate"]
    common = ["--home", str(home), "--tools-dir", str(tools)]

    def run(*args: str, stdin: str | None = None) -> None:
        subprocess.run([*base, *args, *common], input=stdin, text=True, check=True, env=env, stdout=subprocess.DEVNULL)

    run("user", "add", "alice")
    run("group", "add", "people")
    run("group", "member", "add", "people", "alice")
    run("group", "allow", "people", "echo", "--personal")
    secret = '{"api_key": "sk-alice-0123456789abcdef"}'
    run("cred", "add", "alice-key", "--tool", "echo", "--owner", "alice", "--from-json", "-", stdin=secret)
    run("bind", "people", "echo", "alice-key", "--user", "alice")
    return [*base, "serve", "--group", "people", "--user", "alice", *common]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per server and run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with fresh servers (default 3)")
    opts = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shared_argv, env = setup_credgate(home)
        personal_argv = add_personal_group(home, {**os.environ, **env})
        servers = {
            "bare mcp server": ([sys.executable, str(HERE / "bare_server.py")], {}),
            SHARED: (shared_argv, env),
            PERSONAL: (personal_argv, env),
        }
        for run in range(opts.runs):
            results = await measure(servers, opts.calls)
            print(f"run {run + 1}: stdio, {opts.calls} sequential tools/call each, alternating call by call")
            figures = print_table(results)
            ratios.append(figures[PERSONAL][0] / figures[SHARED][0])
            print(f"throughput ratio personal/shared: {ratios[-1]:.3f}")
    print(f"median of {opts.runs} runs, personal/shared: {statistics.median(ratios):.3f} (target >= 0.97)")


if __name__ == "__main__":
    anyio.run(main)
