"""Benchmark: what egress injection adds to an upstream's call (issue 27). The same upstream (`egress_upstream.py`,
a kept-alive httpx client) calls the same local HTTPS API with a token, side by side in one run, calls alternating
one by one:

- `inject = "env"`: it holds the real token and reaches the API on the sandbox's network, straight;
- `inject = "egress"`: it holds a placeholder; each request goes through the forwarder in its sandbox to the
  gateway's egress proxy, which ends its TLS, swaps the placeholder for the token, checks the answer and sends it
  on over its own (kept) verified connection to the API.

Both run in their sandboxes in credgate's upstream pool, as the gateway runs them; a call is the pool's
`tools/call` to the upstream, its HTTPS request to the API included. The API runs in this process (a thread),
under the names 127.0.0.1 (env) and api.bench.test (egress, which the proxy finds on 127.0.0.1).

    python bench/bench_egress.py [--calls 500]

Prints p50 and p90 of a call for each, and what egress adds at p50 (the goal: at most 1 ms).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' HTTPS API

from mcp_credgate.config import Settings
from mcp_credgate.credential import Credential
from mcp_credgate.declarations import CredentialField, McpHandler
from mcp_credgate.egress_ca import Authority
from mcp_credgate.handlers.egress import EgressKit
from mcp_credgate.handlers.upstream import upstream_pool
from mcp_credgate.isolation import UpstreamScope
from mcp_credgate.sandbox import SandboxPolicy
from tests.support.egress_api import https_api

HERE = Path(__file__).resolve().parent
HOST = "api.bench.test"
TOKEN = "tok-bench-" + secrets.token_hex(12)
FIELDS = (CredentialField(name="token", kind="token", secret=True),)


def handlers(folder: Path, port: int) -> dict[str, McpHandler]:
    common = {
        "kind": "mcp",
        "command": sys.executable,
        "args": (str(HERE / "egress_upstream.py"),),
        "sandbox": {"read": [str(folder)]},
    }
    env = {"API_TOKEN": "{cred.token}"}
    return {
        "env": McpHandler.model_validate(
            {**common, "env": {**env, "API_URL": f"https://127.0.0.1:{port}", "SSL_CERT_FILE": str(folder / "ca.pem")}}
        ),
        "egress": McpHandler.model_validate(
            {**common, "env": {**env, "API_URL": f"https://{HOST}"}, "inject": "egress", "egress": {"hosts": [HOST]}}
        ),
    }


async def measure(calls: int, state: Path, folder: Path) -> dict[str, list[float]]:
    credential = Credential("tok", "t", {"token": TOKEN}, frozenset({"token"}))
    with https_api(folder, ["127.0.0.1", HOST], TOKEN) as api:
        kit = EgressKit(
            secrets.token_bytes(32),
            Authority.new("bench"),
            lambda _: FIELDS,
            upstream_ca=api.ca_file,
            resolve={HOST: ("127.0.0.1", api.port)},
        )
        sandbox = SandboxPolicy.of(Settings.resolve(env={"CREDGATE_STATE_DIR": str(state)}))
        times: dict[str, list[float]] = {"env": [], "egress": []}
        async with upstream_pool(sandbox=sandbox, egress=kit) as pool:
            paths = {
                name: (UpstreamScope(name, "tok", "bench", None), h) for name, h in handlers(folder, api.port).items()
            }
            for round in range(calls + 20):  # the first 20 warm both up (start, TLS, kept connections)
                for name, (scope, handler) in paths.items():
                    began = time.perf_counter()
                    result = await pool.call(scope, handler, "call", {}, credential)
                    spent = time.perf_counter() - began
                    text = result.content[0].text if result.content and result.content[0].type == "text" else ""
                    if result.is_error or text != "200":
                        raise SystemExit(f"{name}: the call failed: {text[:200]}")
                    if round >= 20:
                        times[name].append(spent)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="calls per path (default 500)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:  # not /tmp: each sandbox has a /tmp of its own
        folder = Path(tmp) / "api"
        folder.mkdir()
        times = await measure(opts.calls, Path(tmp) / "state", folder)
    print(f"an upstream's call with one HTTPS request to an API, {opts.calls} calls each, alternating")
    print(f"{'inject':<10}{'p50 ms':>10}{'p90 ms':>10}")
    p50 = {}
    for name, spent in times.items():
        p50[name] = statistics.median(spent) * 1000
        print(f"{name:<10}{p50[name]:>10.2f}{statistics.quantiles(spent, n=10)[-1] * 1000:>10.2f}")
    print(f"egress adds at p50: {p50['egress'] - p50['env']:.2f} ms (goal: at most 1 ms)")


if __name__ == "__main__":
    os.environ.pop("CREDGATE_HOME", None)
    anyio.run(main)
