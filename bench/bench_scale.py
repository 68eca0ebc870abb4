"""Benchmark: a store of a million credentials against one of ten, side by side in one run.

Two stores with the same declarations (an echo tool that needs an API-key credential, as in bench_stdio.py):
a small one (10 credentials, 10 groups, 10 agents, 10 audit rows) and a big one (--credentials, default
1,000,000; --groups, default 10,000, one agent each; --audit-rows, default as many as credentials). The big
store's credentials are loaded with `credgate cred import` (a JSON lines file; its time is printed), its
groups, bindings, agents and audit rows through the store's own write transaction (executemany: there is no
bulk command for those). Then, for each operation, both stores answer in turn, run after run: tools/list and a
call through an MCP client session (the SDK's in-memory client on credgate's server), `credgate group show` as
a real process and in-process, and each dashboard list page over HTTP through the Starlette app in-process.
Printed: the median of each store per run, and the median over the runs of the big/small ratio.

    python bench/bench_scale.py [--credentials 1000000] [--groups 10000] [--runs 7] [--database-url URL]

With --database-url (PostgreSQL), both stores are schemas of that database, made and dropped by the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
from click.testing import CliRunner
from mcp import Client
from starlette.testclient import TestClient

from mcp_credgate.caller import Caller
from mcp_credgate.cli import cli
from mcp_credgate.config import Settings
from mcp_credgate.declarations import Catalog, load_catalog
from mcp_credgate.gateway import Gateway
from mcp_credgate.server import build_server
from mcp_credgate.store import AuditRow, Store, now
from mcp_credgate.web.app import build_dashboard_app
from mcp_credgate.web.session import new_admin_secret

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_tools, the echo tool's module
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
GROUP = "group-00007"  # the group every operation works in, in both stores
BASE = "http://127.0.0.1:8765"


def cred_name(i: int) -> str:
    return f"cred-{i:07d}"


def group_name(i: int) -> str:
    return f"group-{i:05d}"


@contextmanager
def schema(url: str | None, name: str) -> Iterator[str | None]:
    """A PostgreSQL schema of its own for a store (dropped at the end), as a URL; None on SQLite."""
    if url is None:
        yield None
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def credgate(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    if settings.database_url:
        env["CREDGATE_DATABASE_URL"] = settings.database_url
    command = [sys.executable, "-m", "mcp_credgate", "--home", str(settings.home)]
    command += ["--tools-dir", str(settings.tools_dirs[0]), *args]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"credgate {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def build(root: Path, credentials: int, groups: int, audit_rows: int, database_url: str | None) -> tuple[Settings, str]:
    """A store of `credentials` (cred import), `groups` groups each allowing echo bound to a credential and with
    one agent, and `audit_rows` audit rows; returns its settings and what building it took."""
    tools = root / "tools.d"
    tools.mkdir(parents=True)
    (tools / "echo.toml").write_text(TOOL)
    settings = Settings(root / "home", (tools,), BASE, database_url)
    credgate(settings, "init")
    source = root / "credentials.jsonl"
    with source.open("w") as f:
        for i in range(credentials):
            f.write(json.dumps({"name": cred_name(i), "api_key": f"sk-bench-{i:020d}"}) + "\n")
    started = time.perf_counter()
    credgate(settings, "cred", "import", str(source), "--type", "bench")
    imported = time.perf_counter() - started
    source.unlink()
    started = time.perf_counter()
    step = max(1, credentials // groups)
    stamp = now()
    with Store.open(settings) as store:
        with store._write() as conn:  # the store's own transaction; executemany for speed
            conn.executemany(
                "INSERT INTO groups (name, description, created_at) VALUES (?, ?, ?)",
                [(group_name(g), f"bench group {g}", stamp) for g in range(groups)],
            )
            conn.executemany(
                "INSERT INTO group_tools (group_id, tool, credential_id) SELECT g.id, 'echo', c.id"
                " FROM groups g, credentials c WHERE g.name = ? AND c.name = ?",
                [(group_name(g), cred_name(g * step)) for g in range(groups)],
            )
            conn.executemany(
                "INSERT INTO agents (name, group_id, token_hash, created_at) SELECT ?, id, ?, ? FROM groups"
                " WHERE name = ?",
                [(f"agent-{g:05d}", f"bench-hash-{g}", stamp, group_name(g)) for g in range(groups)],
            )
        for start in range(0, audit_rows, 50_000):
            store.write_audit(
                [audit_row(i, groups, step, stamp) for i in range(start, min(audit_rows, start + 50_000))]
            )
    rest = time.perf_counter() - started
    made = (
        f"{credentials:,} credentials by `cred import` in {imported:.1f} s ({credentials / imported:,.0f}/s); "
        f"{groups:,} groups, bindings, agents and {audit_rows:,} audit rows in {rest:.1f} s"
    )
    return settings, made


def audit_row(i: int, groups: int, step: int, stamp: str) -> AuditRow:
    """The i-th call: of each group in turn, with its agent and credential; one in a hundred failed."""
    g = i % groups
    outcome = "error" if i % 100 == 0 else "ok"
    return AuditRow(stamp, group_name(g), f"agent-{g:05d}", "echo", cred_name(g * step), outcome, 1.0)


Sample = Callable[[], object]


def interleaved(work: Mapping[str, Sample], reps: int) -> dict[str, float]:
    """Each store's `work` `reps` times, one store after the other each time (so drift hits both alike): the
    median of each, in ms."""
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(reps):
        for name, one in work.items():
            start = time.perf_counter()
            one()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


async def interleaved_async(work: Mapping[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(reps):
        for name, one in work.items():
            start = time.perf_counter()
            await one()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


class Results:
    """Operation → store → the median of each run, in ms."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, list[float]]] = {}

    def add(self, operation: str, medians: Mapping[str, float]) -> None:
        for store, ms in medians.items():
            self.runs.setdefault(operation, {}).setdefault(store, []).append(ms)

    def print(self) -> None:
        width = max(len(op) for op in self.runs) + 2
        print(f"{'operation':<{width}}{'small ms':>10}{'big ms':>10}{'big/small':>11}  (range over runs)")
        for op, by_store in self.runs.items():
            small, big = by_store["small"], by_store["big"]
            ratios = [b / s for s, b in zip(small, big, strict=True)]
            print(
                f"{op:<{width}}{statistics.median(small):>10.3f}{statistics.median(big):>10.3f}"
                f"{statistics.median(ratios):>11.2f}  ({min(ratios):.2f}–{max(ratios):.2f})"
            )


async def measure_mcp(stores: Mapping[str, tuple[Settings, Catalog]], results: Results, runs: int, reps: int) -> None:
    """tools/list and a call, through the SDK's client session on credgate's server, store after store."""
    gateways = {name: Gateway.open(s, c) for name, (s, c) in stores.items()}
    try:
        async with (
            Client(build_server(gateways["small"], lambda ctx: Caller(GROUP, None))) as small,
            Client(build_server(gateways["big"], lambda ctx: Caller(GROUP, None))) as big,
        ):
            clients = {"small": small, "big": big}
            for client in clients.values():
                listed = await client.list_tools()
                assert [t.name for t in listed.tools] == ["echo"], listed
                for _ in range(50):  # warm-up
                    await client.call_tool("echo", {"text": "warm"})
            calls = {}
            for name, client in clients.items():

                async def call(client: Client = client) -> None:
                    result = await client.call_tool("echo", {"text": "hello"})
                    assert not result.is_error, result

                calls[name] = call
            for _ in range(runs):
                listings = {name: client.list_tools for name, client in clients.items()}
                results.add("tools/list (MCP session)", await interleaved_async(listings, reps))
                results.add("tools/call echo (MCP session)", await interleaved_async(calls, reps))
    finally:
        for gateway in gateways.values():
            await gateway.aclose()


def measure_cli(stores: Mapping[str, tuple[Settings, Catalog]], results: Results, runs: int, reps: int) -> None:
    runner = CliRunner()

    def in_process(settings: Settings, *args: str) -> Sample:
        argv = ["--home", str(settings.home), "--tools-dir", str(settings.tools_dirs[0]), *args]
        env = {"CREDGATE_DATABASE_URL": settings.database_url} if settings.database_url else {}

        def run() -> None:
            result = runner.invoke(cli, argv, env=env, catch_exceptions=False)
            assert result.exit_code == 0, result.output

        return run

    def show(settings: Settings) -> Sample:
        return lambda: credgate(settings, "group", "show", GROUP, "--json")

    for _ in range(runs):
        processes = {name: show(settings) for name, (settings, _) in stores.items()}
        results.add("credgate group show (a process)", interleaved(processes, max(1, reps // 2)))
        here = {name: in_process(settings, "group", "show", GROUP, "--json") for name, (settings, _) in stores.items()}
        results.add("credgate group show (in-process)", interleaved(here, reps))
        listing = {
            name: in_process(settings, "cred", "list", "--limit", "10") for name, (settings, _) in stores.items()
        }
        results.add("credgate cred list --limit 10 (in-process)", interleaved(listing, reps))


def pages(credentials: int) -> dict[str, str]:
    """Each list page, as asked of a store of `credentials` credentials (the deep page is the middle one)."""
    return {
        "/credentials (first page, 50)": "/credentials",
        "/credentials?limit=10": "/credentials?limit=10",
        "/credentials?after=<middle>&limit=3": f"/credentials?after={cred_name(credentials // 2)}&limit=3",
        "/credentials?q=cred-000000 (prefix)": "/credentials?q=cred-000000",
        "/credentials?type=bench&limit=10": "/credentials?type=bench&limit=10",
        "/groups (first page, 50)": "/groups",
        "/groups?limit=10": "/groups?limit=10",
        "/groups?q=group-0000 (prefix)": "/groups?q=group-0000",
        f"/groups/{GROUP}": f"/groups/{GROUP}",
        f"/groups/{GROUP}/tools/echo/setup": f"/groups/{GROUP}/tools/echo/setup",
        "/agents (first page, 50)": "/agents",
        "/agents?limit=10": "/agents?limit=10",
        "/agents?q=agent-0000 (prefix)": "/agents?q=agent-0000",
        "/audit (first page, 100)": "/audit",
        "/audit?limit=10": "/audit?limit=10",
        f"/audit?group={GROUP}&limit=10": f"/audit?group={GROUP}&limit=10",
        "/audit?outcome=error&limit=1": "/audit?outcome=error&limit=1",
    }


def measure_pages(
    stores: Mapping[str, tuple[Settings, Catalog]], sizes: Mapping[str, int], results: Results, runs: int, reps: int
) -> None:
    with ExitStack() as stack:
        clients = {}
        for name, (settings, catalog) in stores.items():
            with Store.open(settings) as store:
                secret = new_admin_secret(store)
            app = build_dashboard_app(settings, catalog, host="127.0.0.1", port=8765)
            client = stack.enter_context(TestClient(app, base_url=BASE, follow_redirects=False))
            assert client.post("/login", data={"secret": secret}).status_code == 303
            clients[name] = client
        asked = {name: pages(sizes[name]) for name in stores}
        for label in asked["small"]:
            for name, client in clients.items():
                response = client.get(asked[name][label])
                assert response.status_code == 200, (name, label, response.status_code)
        for _ in range(runs):
            for label in asked["small"]:
                gets = {name: getter(client, asked[name][label]) for name, client in clients.items()}
                results.add(f"GET {label}", interleaved(gets, reps))


def getter(client: TestClient, path: str) -> Sample:
    def get() -> None:
        assert client.get(path).status_code == 200

    return get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--credentials", type=int, default=1_000_000, help="credentials of the big store")
    parser.add_argument("--groups", type=int, default=10_000, help="groups of the big store (one agent each)")
    parser.add_argument("--audit-rows", type=int, help="audit rows of the big store (default: as many as credentials)")
    parser.add_argument("--runs", type=int, default=7, help="runs; each alternates the stores operation by operation")
    parser.add_argument("--reps", type=int, default=20, help="repetitions of an operation per run and store")
    parser.add_argument("--database-url", help="PostgreSQL: both stores in schemas of this database (else SQLite)")
    opts = parser.parse_args()
    audit_rows = opts.credentials if opts.audit_rows is None else opts.audit_rows
    backend = "PostgreSQL" if opts.database_url else "SQLite"
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        small, _ = build(tmp / "small", 10, 10, 10, stack.enter_context(schema(opts.database_url, "bench_small")))
        big_url = stack.enter_context(schema(opts.database_url, "bench_big"))
        big, made = build(tmp / "big", opts.credentials, opts.groups, audit_rows, big_url)
        print(
            f"scale, {backend}: a store of {opts.credentials:,} credentials / {opts.groups:,} groups / "
            f"{audit_rows:,} audit rows (big) against one of 10 / 10 / 10 (small), alternating operation by operation"
        )
        print(f"built the big store: {made}")
        stores = {"small": (small, load_catalog(small.tools_dirs)), "big": (big, load_catalog(big.tools_dirs))}
        results = Results()
        anyio.run(measure_mcp, stores, results, opts.runs, opts.reps * 5)
        measure_cli(stores, results, opts.runs, opts.reps)
        measure_pages(stores, {"small": 10, "big": opts.credentials}, results, opts.runs, opts.reps)
    print(f"medians of {opts.runs} runs ({opts.reps} repetitions each; MCP operations {opts.reps * 5})")
    results.print()


if __name__ == "__main__":
    main()
