"""Benchmark: how long a new remote client takes from its first request to its first tool result, signing in on
the way (issue 23): the 401, discovery (RFC 9728, RFC 8414), registration, a person at a real browser (headless
chromium driven by Playwright: sign-in form, consent page), the code exchanged for tokens, `initialize`,
`tools/list`, and `tools/call` of a tool that needs no credential.

`credgate serve --http` on 127.0.0.1 (SQLite), one user in one group; every run is a new client (a new
registration, a new agent) and a new browser, against a server started for it (registrations are limited to 10
a minute per address, per process) and warmed by a discovery and a 401 before the clock starts. The Python
SDK's `OAuthClientProvider` is timed in process; the TypeScript SDK's client (tests/node/ts_sdk_client.mjs, on
Node 22 from tests/node) by its own clock, from its first request. The browser's share (launching chromium
included) is shown apart.

    python bench/bench_sign_in.py [--runs 7] [--no-typescript]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests' support: the world, the server, the person at the browser

from mcp_credgate import people  # noqa: E402
from tests.support.gateway import World, python_tool  # noqa: E402
from tests.support.http_server import Server, start_server  # noqa: E402
from tests.support.node import NODE_DIR, NodeLines  # noqa: E402
from tests.support.sign_in import CALLBACK, BrowserUser, oauth_provider, signed_in_http  # noqa: E402


class TimedUser(BrowserUser):
    """The person at the browser, with the time spent there (launching chromium included)."""

    browsing: float = 0.0

    def follow(self, authorization_url: str) -> str:
        began = time.perf_counter()
        try:
            return super().follow(authorization_url)
        finally:
            self.browsing += time.perf_counter() - began


Timing = tuple[float, float, float]  # first request to first tool result, in the browser, on its pages


async def python_run(server: Server, secret: str) -> Timing:
    """(first request to first tool result, of which in the browser, of which on its pages), in seconds."""
    person = TimedUser(secret, group="research")
    provider = oauth_provider(server.mcp_url, person)
    began = time.perf_counter()
    async with (
        signed_in_http(provider) as http,
        Client(streamable_http_client(server.mcp_url, http_client=http)) as client,
    ):
        await client.list_tools()
        result = await client.call_tool("clock", {})
        took = time.perf_counter() - began
    assert not result.is_error, result
    return took, person.browsing, sum(person.on_pages)


def typescript_run(server: Server, secret: str, folder: Path) -> Timing:
    person = TimedUser(secret, group="research")
    script = NODE_DIR / "ts_sdk_client.mjs"
    with NodeLines(script, [server.mcp_url, CALLBACK, str(folder / "tokens.json")], folder / "ts.err") as client:
        start = client.expect("start")
        asked = client.expect("authorize")
        redirect = person.follow(asked["url"])
        client.send(redirect.split("code=", 1)[1].split("&", 1)[0])
        client.expect("connected")
        called = client.expect("called")
    assert not called["isError"], called
    return (called["at"] - start["at"]) / 1000, person.browsing, sum(person.on_pages)


def report(name: str, runs: list[Timing]) -> None:
    totals = [t for t, _, _ in runs]
    browser = [b for _, b, _ in runs]
    pages = [p for _, _, p in runs]
    rest = [t - b for t, b, _ in runs]

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:7.0f} ms"

    print(f"{name}: {len(runs)} runs")
    print(
        f"  first request -> first tool result  median {ms(totals)}  (min {min(totals) * 1000:.0f}, max "
        f"{max(totals) * 1000:.0f})"
    )
    print(f"  of which in the browser             median {ms(browser)}")
    print(f"    on its pages (authorize to redirect) median {ms(pages)}  (the rest: Playwright, chromium starting)")
    print(f"  the rest (HTTP, OAuth, MCP)         median {ms(rest)}")
    print("  each run (ms): " + ", ".join(f"{t * 1000:.0f}" for t in totals))


def warmed(world: World, folder: Path) -> Server:
    server = start_server(world, folder)
    with httpx2.Client(base_url=server.base, timeout=30) as http:
        http.get("/.well-known/oauth-protected-resource")
        http.get("/.well-known/oauth-authorization-server")
        assert http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).status_code == 401
    return server


def timed(world: World, root: Path, runs: int, run: Callable[[Server, Path], Timing]) -> list[Timing]:
    """`runs` runs of `run`, each on a new warm server, after one more (the first chromium launch reads it
    from disk)."""
    results: list[Timing] = []
    for i in range(runs + 1):
        folder = root / f"run-{len(list(root.iterdir()))}-{i}"
        server = warmed(world, folder)
        try:
            results.append(run(server, folder))
        finally:
            server.stop()
    return results[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-typescript", action="store_true")
    options = parser.parse_args(argv)
    assert options.runs >= 1
    results: dict[str, list[Timing]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = World.create(root / "site", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
        world.allow("research", "clock")
        secret = people.create_user(world.store, "ann")
        world.store.add_members("research", ["ann"])
        try:
            results["Python SDK (OAuthClientProvider)"] = timed(
                world, root, options.runs, lambda server, _: anyio.run(python_run, server, secret)
            )
            if not options.no_typescript:
                results["TypeScript SDK 1.32.2 (StreamableHTTPClientTransport + authProvider)"] = timed(
                    world, root, options.runs, lambda server, folder: typescript_run(server, secret, folder)
                )
        finally:
            world.close()
    for name, runs in results.items():
        report(name, runs)


if __name__ == "__main__":
    main()
