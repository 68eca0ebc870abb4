"""Benchmark: the PostgreSQL store against SQLite, and two replicas against one (issue 10).

All servers are real `credgate serve --http` processes on 127.0.0.1, driven by the SDK's Streamable HTTP
client with the echo tool (an API-key credential resolved, decrypted and injected on every call).

1. one replica on SQLite vs one replica on PostgreSQL, both running at once: sequential calls alternating
   between them call by call, then 50 concurrent agents against one at a time, in alternating rounds;
2. PostgreSQL, 50 concurrent agents: all on one replica vs split over two replicas, alternating rounds;
3. with `--budget`: PostgreSQL, 50 concurrent agents split over two replicas, on a store whose group has limits
   (calls per day, spend per month: every call counted in one transaction on the primary) vs on one without any,
   alternating rounds (issue 25's figure).

PostgreSQL is a throw-away cluster that scripts/pg-cluster starts (fsync on, as in production), unless
--database-url names one (its database gets a schema of its own, dropped at the end).

    python bench/bench_replicas.py [--calls 1000] [--clients 50] [--per-client 20] [--rounds 3] [--budget]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

import anyio
import psycopg
from bench_http import concurrent, free_port, print_concurrent_table, running, sequential
from bench_stdio import HERE, print_table, setup_credgate

PG_CLUSTER = HERE.parent / "scripts" / "pg-cluster"


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """The given server's URL, or a throw-away cluster's."""
    with ExitStack() as stack:
        if url is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="credgate-bench-pg-")))
            folder.chmod(0o711)  # as root, the cluster runs as `postgres`
            cluster = folder / "cluster"
            url = subprocess.run(
                ["bash", str(PG_CLUSTER), "start", str(cluster)], check=True, capture_output=True, text=True
            ).stdout.strip()
            stack.callback(subprocess.run, ["bash", str(PG_CLUSTER), "stop", str(cluster)], capture_output=True)
        yield url


@contextmanager
def new_schema(url: str) -> Iterator[str]:
    """A URL of the server whose search_path is a new schema (dropped at the end): a store of its own."""
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def http_server(serve_argv: list[str], env: dict[str, str], token_env: dict[str, str]) -> tuple[list[str], str]:
    """The `serve --http` command line on a free port, and an agent token of group `bench`."""
    base = serve_argv[: serve_argv.index("serve")]
    common = serve_argv[serve_argv.index("--home") :]
    out = subprocess.run(
        [*base, "agent", "add", "bench", f"agent-{secrets.token_hex(3)}", "--json", *common],
        env={**os.environ, **token_env},
        check=True,
        capture_output=True,
        text=True,
    )
    return [*base, "serve", "--http", "--port", "{port}", *common], json.loads(out.stdout)["token"]


def on_port(argv: list[str], port: int) -> list[str]:
    return [a.replace("{port}", str(port)) for a in argv]


async def split_load(targets: list[tuple[str, str]], clients: int, per_client: int) -> tuple[list[float], float]:
    """`clients` agents at once, spread evenly over the targets (as a load balancer would)."""
    times: list[float] = []
    elapsed = 0.0

    async def part(url: str, token: str, share: int) -> None:
        nonlocal elapsed
        got, wall = await concurrent(url, token, share, per_client)
        times.extend(got)
        elapsed = max(elapsed, wall)

    async with anyio.create_task_group() as tg:
        for i, (url, token) in enumerate(targets):
            tg.start_soon(part, url, token, clients // len(targets) + (1 if i < clients % len(targets) else 0))
    return times, elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per server")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of concurrent load")
    parser.add_argument("--database-url", help="a PostgreSQL server to use instead of a throw-away cluster")
    parser.add_argument("--budget", action="store_true", help="add 3.: two replicas with limits vs without")
    opts = parser.parse_args()
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        server = stack.enter_context(postgres(opts.database_url))
        sqlite_argv, sqlite_env = setup_credgate(Path(tmp) / "sqlite-home")
        pg_argv, pg_env = setup_credgate(
            Path(tmp) / "pg-home", {"CREDGATE_DATABASE_URL": stack.enter_context(new_schema(server))}
        )
        sqlite_http, sqlite_token = http_server(sqlite_argv, sqlite_env, sqlite_env)
        pg_http, pg_token = http_server(pg_argv, pg_env, pg_env)
        ports = {"sqlite": free_port(), "postgresql": free_port(), "postgresql 2": free_port()}
        stack.enter_context(running(on_port(sqlite_http, ports["sqlite"]), sqlite_env, ports["sqlite"]))
        stack.enter_context(running(on_port(pg_http, ports["postgresql"]), pg_env, ports["postgresql"]))
        stack.enter_context(running(on_port(pg_http, ports["postgresql 2"]), pg_env, ports["postgresql 2"]))
        budgeted: list[tuple[str, str]] = []
        if opts.budget:
            limited_env = {"CREDGATE_DATABASE_URL": stack.enter_context(new_schema(server))}
            limited_argv, limited_env = setup_credgate(Path(tmp) / "limited-home", limited_env, budget=True)
            limited_http, limited_token = http_server(limited_argv, limited_env, limited_env)
            for _ in range(2):
                port = free_port()
                stack.enter_context(running(on_port(limited_http, port), limited_env, port))
                budgeted.append((f"http://127.0.0.1:{port}/mcp", limited_token))
        urls = {name: f"http://127.0.0.1:{port}/mcp" for name, port in ports.items()}
        for target, token in [(urls["sqlite"], sqlite_token), (urls["postgresql 2"], pg_token)]:
            await concurrent(target, token, opts.clients, 5)  # warm (sequential below warms the others)
        seq = await sequential(
            {"sqlite": (urls["sqlite"], sqlite_token), "postgresql": (urls["postgresql"], pg_token)}, opts.calls
        )
        backends = {"sqlite": (urls["sqlite"], sqlite_token), "postgresql": (urls["postgresql"], pg_token)}
        replicas = {
            "1 replica": [(urls["postgresql"], pg_token)],
            "2 replicas": [(urls["postgresql"], pg_token), (urls["postgresql 2"], pg_token)],
        }
        limits = {"no limits": replicas["2 replicas"], "with limits": budgeted} if budgeted else {}
        for target, token in budgeted:
            await concurrent(target, token, opts.clients, 5)  # warm
        conc: dict[str, list[float]] = {}
        wall: dict[str, float] = {}
        for _ in range(opts.rounds):
            for name, (target, token) in backends.items():
                times, elapsed = await concurrent(target, token, opts.clients, opts.per_client)
                conc.setdefault(name, []).extend(times)
                wall[name] = wall.get(name, 0.0) + elapsed
            for name, targets in replicas.items():
                times, elapsed = await split_load(targets, opts.clients, opts.per_client)
                conc.setdefault(name, []).extend(times)
                wall[name] = wall.get(name, 0.0) + elapsed
            for name, targets in limits.items():
                times, elapsed = await split_load(targets, opts.clients, opts.per_client)
                conc.setdefault(name, []).extend(times)
                wall[name] = wall.get(name, 0.0) + elapsed

    def concurrent_table(names: list[str]) -> dict[str, float]:
        return print_concurrent_table({name: conc[name] for name in names}, wall, heading="")

    cores = os.cpu_count()
    print(f"Streamable HTTP, echo tool with an API-key credential; {cores} CPU cores shared by everything")
    print(f"1. one replica per store, sequential: {opts.calls} calls from one client each, alternating call by call")
    rates = print_table(seq, "store")
    print(f"sequential throughput ratio postgresql/sqlite: {rates['postgresql'][0] / rates['sqlite'][0]:.2f}")
    print(f"   concurrent: {opts.clients} agents x {opts.per_client} calls, {opts.rounds} alternating rounds")
    crates = concurrent_table(["sqlite", "postgresql"])
    print(f"concurrent throughput ratio postgresql/sqlite: {crates['postgresql'] / crates['sqlite']:.2f}")
    print(f"2. PostgreSQL, {opts.clients} concurrent agents on one replica vs split over two")
    crates = concurrent_table(["1 replica", "2 replicas"])
    print(f"throughput ratio 2 replicas/1 replica: {crates['2 replicas'] / crates['1 replica']:.2f}")
    if opts.budget:
        print(f"3. PostgreSQL, {opts.clients} concurrent agents over two replicas: a group with limits vs without")
        crates = concurrent_table(["no limits", "with limits"])
        print(f"throughput ratio with limits/no limits: {crates['with limits'] / crates['no limits']:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    anyio.run(main)
