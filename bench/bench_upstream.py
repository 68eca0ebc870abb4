"""Benchmark: calls to a stdio MCP server through credgate vs straight to it with the SDK's client.

credgate starts the upstream with the group's token in its environment and relays each call (argument
check, credential resolution, redaction, audit). Both paths run at once and calls alternate one by one.

    python bench/bench_upstream.py [--calls 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from bench_stdio import HERE, measure, print_table

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


def setup(home: Path) -> tuple[list[str], dict[str, str]]:
    tools = home / "tools.d"
    tools.mkdir(parents=True)
    (tools / "up.toml").write_text(TOOL)
    base = [sys.executable, "-m", "mcp_credgate"]
    common = ["--home", str(home), "--tools-dir", str(tools)]

    def run(*args: str, stdin: str | None = None) -> None:
        subprocess.run([*base, *args, *common], input=stdin, text=True, check=True, stdout=subprocess.DEVNULL)

    run("init")
    run("tools")  # discovers the upstream's tools
    run("cred", "add", "up-token", "--type", "uptoken", "--from-json", "-", stdin='{"token": "tok-bench-0123456789"}')
    run("group", "add", "bench")
    run("group", "allow", "bench", "up.*")
    run("bind", "bench", "up", "up-token")
    return [*base, "serve", "--group", "bench", *common], {}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per path (default 1000)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        credgate_argv, env = setup(Path(tmp) / "home")
        servers = {
            "direct to upstream": ([sys.executable, str(HERE / "upstream_echo.py")], {"UPSTREAM_TOKEN": "tok"}),
            "through credgate": (credgate_argv, env),
        }
        results = await measure(servers, opts.calls, tool_names={"through credgate": "up_echo"})
    print(f"stdio upstream, {opts.calls} sequential tools/call each, alternating call by call")
    figures = print_table(results, "path")
    ratio = figures["through credgate"][0] / figures["direct to upstream"][0]
    print(f"throughput ratio credgate/direct: {ratio:.2f}")


if __name__ == "__main__":
    os.environ.pop("CREDGATE_HOME", None)
    anyio.run(main)
