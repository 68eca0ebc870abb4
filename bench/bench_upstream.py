"""Benchmark: calls to a stdio MCP server straight with the SDK's client, through credgate with the upstream in
its sandbox (bubblewrap), and through credgate without it (`serve --no-sandbox`), side by side in one run; then
the upstream's start-up time (start and handshake) with and without the sandbox.

Four relays of nothing but the call run beside them and tell where a relay's time goes: `byte_relay.py` (bytes
copied both ways, no message read: the floor of any relay process), `envelope_relay.py` (each message parsed as
JSON and written again, no SDK), `sdk_server_relay.py` (the SDK's server toward the agent, JSON lines toward the
upstream) and `bare_relay.py` (the SDK's server and the SDK's client: the floor of a relay built on the SDK;
credgate against it is what credgate's own work costs on this path).

credgate starts the upstream with the group's token in its environment and relays each call (argument
check, credential resolution, redaction, audit). All paths run at once and calls alternate one by one.
Start-ups alternate too: each is a new upstream process started by credgate's upstream pool.

    python bench/bench_upstream.py [--calls 1000] [--starts 10] [--before SRC]

`--before SRC` adds a path: credgate (sandboxed) run from another source tree's `src` (e.g. an earlier
commit's, from `git archive`), on the same store: a before/after pair measured side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import anyio
from bench_stdio import HERE, measure, print_table

from mcp_credgate.config import Settings
from mcp_credgate.credential import Credential
from mcp_credgate.declarations import McpHandler
from mcp_credgate.handlers.upstream import upstream_pool
from mcp_credgate.isolation import UpstreamScope
from mcp_credgate.sandbox import SandboxPolicy

TOOL = f"""
name = "up"
description = "An upstream MCP server."
[credential]
type = "uptoken"
fields = [{{ name = "token", kind = "token" }}]
[handler]
kind = "mcp"
command = "{sys.executable}"
args = ["{HERE / "upstream_echo.py"}"]
env = {{ UPSTREAM_TOKEN = "{{cred.token}}" }}
"""
SANDBOXED, UNSANDBOXED, BEFORE = "credgate, sandboxed", "credgate, no sandbox", "credgate, before"
RELAY, BYTES, ENVELOPE, HALF = "bare SDK relay", "byte relay", "envelope relay", "SDK server, raw client"


def setup(home: Path, env: dict[str, str]) -> list[str]:
    tools = home / "tools.d"
    tools.mkdir(parents=True)
    (tools / "up.toml").write_text(TOOL)
    base = [sys.executable, "-m", "mcp_credgate"]
    common = ["--home", str(home), "--tools-dir", str(tools)]

    def run(*args: str, stdin: str | None = None) -> None:
        subprocess.run([*base, *args, *common], input=stdin, text=True, check=True, stdout=subprocess.DEVNULL, env=env)

    run("init")
    run("tools")  # discovers the upstream's tools
    run("cred", "add", "up-token", "--type", "uptoken", "--from-json", "-", stdin='{"token": "tok-bench-0123456789"}')
    run("group", "add", "bench")
    run("group", "allow", "bench", "up.*")
    run("bind", "bench", "up", "up-token")
    return [*base, "serve", "--group", "bench", *common]


async def startups(settings: Settings, starts: int) -> dict[str, list[float]]:
    """Seconds from asking credgate's pool for the upstream to its handshake done, a new process each time,
    alternating with and without the sandbox."""
    handler = McpHandler(kind="mcp", command=sys.executable, args=(str(HERE / "upstream_echo.py"),))
    credential = Credential("up-token", "uptoken", {"token": "tok-bench-0123456789"}, frozenset({"token"}))
    policies = {SANDBOXED: SandboxPolicy.of(settings), UNSANDBOXED: SandboxPolicy.of(replace(settings, sandbox=False))}
    times: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(starts):
        for name, policy in policies.items():
            async with upstream_pool(sandbox=policy) as pool:
                began = time.perf_counter()
                await pool.session(UpstreamScope.for_discovery("up", credential.name), handler, credential)
                times[name].append(time.perf_counter() - began)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per path (default 1000)")
    parser.add_argument("--starts", type=int, default=10, help="upstream start-ups per side (default 10)")
    parser.add_argument("--before", type=Path, help="another source tree's src: credgate, sandboxed, run from it")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = {"CREDGATE_STATE_DIR": str(Path(tmp) / "state")}  # the sandboxes' homes: not ~/.local/state
        serve = setup(Path(tmp) / "home", {**os.environ, **state})
        upstream = [sys.executable, str(HERE / "upstream_echo.py")]
        servers = {
            "direct to upstream": (upstream, {"UPSTREAM_TOKEN": "tok"}),
            BYTES: ([sys.executable, str(HERE / "byte_relay.py"), *upstream], {"UPSTREAM_TOKEN": "tok"}),
            ENVELOPE: ([sys.executable, str(HERE / "envelope_relay.py"), *upstream], {"UPSTREAM_TOKEN": "tok"}),
            HALF: ([sys.executable, str(HERE / "sdk_server_relay.py"), *upstream], {"UPSTREAM_TOKEN": "tok"}),
            RELAY: ([sys.executable, str(HERE / "bare_relay.py"), *upstream], {"UPSTREAM_TOKEN": "tok"}),
            SANDBOXED: (serve, state),
            UNSANDBOXED: ([*serve, "--no-sandbox"], state),
        }
        if opts.before is not None:
            servers[BEFORE] = (serve, {**state, "PYTHONPATH": str(opts.before.resolve())})
        names = {SANDBOXED: "up_echo", UNSANDBOXED: "up_echo", BEFORE: "up_echo", ENVELOPE: "up_echo"}
        results = await measure(servers, opts.calls, tool_names=names)
        started = await startups(Settings.resolve(env=state), opts.starts)
    print(f"stdio upstream, {opts.calls} sequential tools/call each, alternating call by call")
    figures = print_table(results, "path")
    direct = figures["direct to upstream"][0]
    print(f"throughput ratio credgate/direct: {figures[SANDBOXED][0] / direct:.2f} sandboxed, ", end="")
    print(f"{figures[UNSANDBOXED][0] / direct:.2f} without")
    relay, floor = figures[RELAY][0], figures[BYTES][0]
    print(f"throughput ratio byte relay/direct: {floor / direct:.2f} (the floor of any relay process)")
    print(f"throughput ratio envelope relay/direct: {figures[ENVELOPE][0] / direct:.2f} (messages read, no SDK)")
    print(f"throughput ratio SDK server, raw client/direct: {figures[HALF][0] / direct:.2f} (SDK toward the agent)")
    print(f"throughput ratio bare SDK relay/direct: {relay / direct:.2f} (the floor of a relay built on the SDK)")
    print(f"throughput ratio credgate/bare SDK relay: {figures[SANDBOXED][0] / relay:.2f} sandboxed, ", end="")
    print(f"{figures[UNSANDBOXED][0] / relay:.2f} without (credgate's own work)")
    if BEFORE in figures:
        print(f"throughput ratio credgate before/direct: {figures[BEFORE][0] / direct:.2f}, ", end="")
        print(f"sandboxed/before: {figures[SANDBOXED][0] / figures[BEFORE][0]:.2f}")
    ratio = figures[SANDBOXED][0] / figures[UNSANDBOXED][0]
    print(f"throughput ratio sandboxed/unsandboxed: {ratio:.3f} (target >= 0.98)")
    print(f"\nupstream start-up (start and handshake), {opts.starts} each, alternating")
    print(f"{'upstream':<24}{'median ms':>10}{'min ms':>10}{'max ms':>10}")
    for name, times in started.items():
        print(f"{name:<24}{statistics.median(times) * 1000:>10.1f}{min(times) * 1000:>10.1f}{max(times) * 1000:>10.1f}")


if __name__ == "__main__":
    os.environ.pop("CREDGATE_HOME", None)
    anyio.run(main)
