"""Benchmark: credgate over Streamable HTTP vs a bare `mcp` server with the same echo tool and bearer check.

Both run as real processes on 127.0.0.1 at once and are driven by the SDK's Streamable HTTP client:
sequential calls alternating between the servers one by one, then 50 concurrent clients against one
server at a time, in alternating rounds.

    python bench/bench_http.py [--calls 2000] [--clients 50] [--per-client 20] [--rounds 4] [--mode legacy]

`--mode legacy`: the clients speak the handshake protocol (2025-11-25: sessions, primed and resumable streams).

`--oauth`: instead, one credgate server, called with a static `cgt_` token and with an OAuth access token
(`cgo_`, of a client's sign-in: contract §6) side by side, to measure what the per-request check of an OAuth
token costs against a static one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from bench_stdio import HERE, print_table, setup_credgate, summary
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(argv: list[str], env: dict[str, str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"server {argv} did not start") from None
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def client(url: str, token: str, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode=mode)


async def sequential(targets: dict[str, tuple[str, str]], calls: int, mode: str = "auto") -> dict[str, list[float]]:
    """One client per server, both open at once; calls alternate between the servers one by one."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    async with AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(client(url, token, mode)) for name, (url, token) in targets.items()
        }
        for c in clients.values():
            for _ in range(20):
                await c.call_tool("echo", {"text": "warm"})
        for i in range(calls):
            for name, c in clients.items():
                start = time.perf_counter()
                result = await c.call_tool("echo", {"text": f"hello {i}"})
                times[name].append(time.perf_counter() - start)
                assert not result.is_error, result
    return times


async def concurrent(
    url: str, token: str, clients: int, per_client: int, mode: str = "auto"
) -> tuple[list[float], float]:
    times: list[float] = []

    async def one(n: int) -> None:
        async with client(url, token, mode) as c:
            for i in range(per_client):
                start = time.perf_counter()
                result = await c.call_tool("echo", {"text": f"agent {n} call {i}"})
                times.append(time.perf_counter() - start)
                assert not result.is_error, result

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(clients):
            tg.start_soon(one, n)
    return times, time.perf_counter() - start


def print_concurrent_table(
    times: dict[str, list[float]], wall: dict[str, float], heading: str = "server"
) -> dict[str, float]:
    """Print calls/s (calls over the wall time of their rounds), p50 and p99 per side; returns the rates."""
    print(f"{heading:<18}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    rates = {}
    for name, side in times.items():
        _, p50, p99 = summary(side)
        rates[name] = len(side) / wall[name]
        print(f"{name:<18}{rates[name]:>10.0f}{p50:>10.3f}{p99:>10.3f}")
    return rates


def oauth_access_token(home: Path, tools: Path, public_url: str) -> str:
    """An OAuth access token for group `bench`, made as a client's sign-in makes it (a user who is a member, a
    registered client, the consent's code, its exchange), in-process on the store."""
    from mcp.shared.auth import OAuthClientInformationFull
    from pydantic import AnyUrl

    from mcp_credgate import people
    from mcp_credgate.authorization import AuthorizationServer, SignInRequest
    from mcp_credgate.config import Settings
    from mcp_credgate.store import Store

    async def grant() -> str:
        with Store.open(Settings.resolve(home=home, tools_dirs=[tools], public_url=public_url)) as store:
            people.create_user(store, "bench-user")
            store.add_members("bench", ["bench-user"])
            server = AuthorizationServer(store, public_url)
            client = OAuthClientInformationFull(
                client_id="bench-client",
                client_name="Bench",
                redirect_uris=[AnyUrl("http://127.0.0.1:9/callback")],
                token_endpoint_auth_method="none",
            )
            await server.register_client(client)
            request = SignInRequest(
                client_id="bench-client",
                redirect_uri="http://127.0.0.1:9/callback",
                redirect_explicit=True,
                code_challenge="unused-here",
                state=None,
                resource=server.resource,
                scopes=(),
                expires_at=time.time() + 60,
            )
            code = parse_qs(urlsplit(server.approve(request, "bench-user", "bench")).query)["code"][0]
            loaded = await server.load_authorization_code(client, code)
            assert loaded is not None
            return (await server.exchange_authorization_code(client, loaded)).access_token

    return anyio.run(grant)


async def compare_tokens(opts: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        serve_argv, env = setup_credgate(home)
        base = serve_argv[: serve_argv.index("serve")]
        common = serve_argv[serve_argv.index("--home") :]
        out = subprocess.run(
            [*base, "agent", "add", "bench", "bench-agent", "--json", *common],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            text=True,
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        tokens = {
            "static cgt_ token": json.loads(out.stdout)["token"],
            "OAuth cgo_ token": await anyio.to_thread.run_sync(
                oauth_access_token, home, home / "tools.d", f"http://127.0.0.1:{port}"
            ),
        }
        conc: dict[str, list[float]] = {name: [] for name in tokens}
        wall: dict[str, float] = {name: 0.0 for name in tokens}
        with running([*base, "serve", "--http", "--port", str(port), *common], env, port):
            seq = await sequential({name: (url, token) for name, token in tokens.items()}, opts.calls)
            for _ in range(opts.rounds):
                for name, token in tokens.items():
                    times, elapsed = await concurrent(url, token, opts.clients, opts.per_client, opts.mode)
                    conc[name] += times
                    wall[name] += elapsed
    print("Streamable HTTP, one credgate server, static and OAuth tokens side by side")
    print(f"sequential: {opts.calls} calls from one client each, alternating call by call")
    rates = print_table(seq, heading="token")
    p50 = {name: figures[1] for name, figures in rates.items()}
    print(f"sequential p50 OAuth/static: {p50['OAuth cgo_ token'] / p50['static cgt_ token']:.3f} (target <= 1.05)")
    print(f"concurrent: {opts.clients} clients x {opts.per_client} calls, {opts.rounds} alternating rounds each")
    crates = print_concurrent_table(conc, wall, heading="token")
    ratio = crates["OAuth cgo_ token"] / crates["static cgt_ token"]
    print(f"concurrent throughput OAuth/static: {ratio:.3f} (target >= 0.95)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per server")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of concurrent load")
    parser.add_argument("--oauth", action="store_true", help="static vs OAuth tokens on one credgate server")
    parser.add_argument(
        "--mode", default="auto", choices=["auto", "legacy"], help="the clients' protocol: 2026-07-28 or handshake"
    )
    opts = parser.parse_args()
    if opts.oauth:
        await compare_tokens(opts)
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        serve_argv, env = setup_credgate(home)
        base = serve_argv[: serve_argv.index("serve")]
        common = serve_argv[serve_argv.index("--home") :]
        out = subprocess.run(
            [*base, "agent", "add", "bench", "bench-agent", "--json", *common],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            text=True,
        )
        credgate_token = json.loads(out.stdout)["token"]
        bare_token = "bench-static-token"
        port_c, port_b = free_port(), free_port()
        servers = {
            "bare mcp server": (
                [sys.executable, str(HERE / "bare_http_server.py"), str(port_b), bare_token],
                {"PYTHONPATH": str(HERE)},
                port_b,
                bare_token,
            ),
            "credgate serve": ([*base, "serve", "--http", "--port", str(port_c), *common], env, port_c, credgate_token),
        }
        conc: dict[str, list[float]] = {name: [] for name in servers}
        wall: dict[str, float] = {name: 0.0 for name in servers}
        with running(*servers["bare mcp server"][:3]), running(*servers["credgate serve"][:3]):
            targets = {name: (f"http://127.0.0.1:{port}/mcp", token) for name, (_, _, port, token) in servers.items()}
            seq = await sequential(targets, opts.calls, opts.mode)
            for _ in range(opts.rounds):  # concurrent load: one server at a time, alternating rounds
                for name, (url, token) in targets.items():
                    times, elapsed = await concurrent(url, token, opts.clients, opts.per_client, opts.mode)
                    conc[name] += times
                    wall[name] += elapsed
    print("Streamable HTTP, both servers running at once")
    print(f"sequential: {opts.calls} calls from one client each, alternating call by call")
    rates = print_table(seq)
    print(f"sequential throughput ratio credgate/bare: {rates['credgate serve'][0] / rates['bare mcp server'][0]:.2f}")
    print(f"concurrent: {opts.clients} clients x {opts.per_client} calls, {opts.rounds} alternating rounds each")
    crates = print_concurrent_table(conc, wall)
    ratio = crates["credgate serve"] / crates["bare mcp server"]
    print(f"concurrent throughput ratio credgate/bare: {ratio:.2f} (target >= 0.90)")


if __name__ == "__main__":
    anyio.run(main)
