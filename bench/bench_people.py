"""Benchmark: a personal tool against the same tool shared, over stdio, side by side in one run.

One store, the echo tool of `bench_stdio.py` needing an API key: group `bench` allows it shared (its binding
serves every agent), group `people` allows it personal, with member alice's own key bound; `serve --group
people --user alice` acts for her. The two servers (and a bare `mcp` server, for scale) run at once and the calls
alternate between them one by one: the personal call's extra work (the user's membership and personal binding,
read once per change of the store like any binding) is the difference.

Then `tools/list` for a member of a group of 1,000 members against a member of a group of one (in process, the
gateway's `Gate`, alternating list by list): what a member's list reads is the group's tools and that member's
own bindings, whatever the number of members.

    python bench/bench_people.py [--calls 2000] [--runs 3] [--members 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from bench_stdio import HERE, measure, print_table, setup_credgate

from mcp_credgate.config import Settings
from mcp_credgate.declarations import load_catalog
from mcp_credgate.gate import Gate
from mcp_credgate.store import Store

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


def members_ratio(home: Path, members: int, runs: int, reps: int = 200) -> list[float]:
    """Per run, the median time of a member's tools/list in a group of `members` over that in a group of one."""
    settings = Settings(home=home, tools_dirs=(home / "tools.d",), public_url="http://127.0.0.1:8765")
    catalog = load_catalog(settings.tools_dirs)
    spec = catalog.tools["echo"].credential
    assert spec is not None
    with Store.open(settings, env={}) as store:
        for group, size in (("crowd", members), ("solo", 1)):
            store.add_group(group)
            store.allow(group, ["echo"], personal=True)
            for i in range(size):
                user = f"{group}-{i:05d}"
                store.add_user(user, f"hash-{user}")
                store.add_credential(
                    f"{user}-key", spec.type, {"api_key": f"sk-{user}-0123456789"}, spec.secret_fields, owner=user
                )
            store.add_members(group, [f"{group}-{i:05d}" for i in range(size)])
            for i in range(size):
                store.bind_personal(group, "echo", f"{group}-{i:05d}", f"{group}-{i:05d}-key")
        gate = Gate(store, catalog, settings.public_url)
        callers = {"crowd": f"crowd-{members // 2:05d}", "solo": "solo-00000"}
        ratios = []
        for _ in range(runs):
            times: dict[str, list[float]] = {"crowd": [], "solo": []}
            for _ in range(reps):
                for group, user in callers.items():
                    start = time.perf_counter()
                    listed = gate.list_tools(group, user)
                    times[group].append(time.perf_counter() - start)
                    assert listed[0].ready
            ratios.append(statistics.median(times["crowd"]) / statistics.median(times["solo"]))
            print(
                f"tools/list of a member, {members} members: {statistics.median(times['crowd']) * 1e6:.0f} us, "
                f"1 member: {statistics.median(times['solo']) * 1e6:.0f} us"
            )
    return ratios


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per server and run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with fresh servers (default 3)")
    parser.add_argument("--members", type=int, default=1000, help="members of the big group (default 1000)")
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
        crowd = members_ratio(home, opts.members, opts.runs)
    print(f"median of {opts.runs} runs, tools/list {opts.members} members / 1 member: {statistics.median(crowd):.3f}")


if __name__ == "__main__":
    anyio.run(main)
