"""Remote clients other than the Python SDK sign in to a real `credgate serve --http` (issue 23's tests with real
clients): the TypeScript SDK's OAuth client, and `mcp-remote` (what Claude Desktop runs to reach a remote server)
serving the MCP Inspector's CLI over stdio. A person answers the consent page in a real browser (chromium, driven
by Playwright); every Node program is pinned in tests/node.

The world: group `research` allows `clock` (no credential needed); `ann` is a member of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from mcp_credgate.cli import cli
from tests.support.browser_opener import opened, opener_script
from tests.support.gateway import World, assert_no_leak
from tests.support.http_server import Server, free_port
from tests.support.node import NODE_DIR, NodeLines, node_for_tests, node_module
from tests.support.sign_in import CALLBACK, BrowserUser, browser_or_skip, clock_site


@dataclass
class Site:
    world: World
    server: Server
    ann: str  # ann's sign-in secret


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with clock_site(tmp_path) as (world, server, ann):
        yield Site(world, server, ann)


def _agent_list(site: Site) -> list[dict[str, str]]:
    result = CliRunner().invoke(cli, ["agent", "list", "--json", "--home", str(site.world.settings.home)])
    assert result.exit_code == 0, result.output
    return [a for a in json.loads(result.output) if a["kind"] == "oauth"]


def _code(redirect: str) -> str:
    query = parse_qs(urlsplit(redirect).query)
    assert "code" in query, redirect
    return query["code"][0]


def test_the_typescript_sdk_client_signs_in_refreshes_and_is_refused_once_its_agent_is_revoked(
    site: Site, tmp_path: Path
) -> None:
    person = BrowserUser(site.ann, group="research")
    script, given = NODE_DIR / "ts_sdk_client.mjs", tmp_path / "ts-tokens.json"
    with NodeLines(script, [site.server.mcp_url, CALLBACK, str(given)], tmp_path / "ts-client.err") as client:
        client.expect("start")
        asked = client.expect("authorize")
        assert asked["url"].startswith(site.server.base + "/authorize?")
        client.send(_code(person.follow(asked["url"])))
        assert client.expect("connected")["tools"] == ["clock"]
        first = client.expect("called")
        assert first["phase"] == "first" and not first["isError"] and first["text"]

        again = client.expect("called")  # through the SDK's refresh: the server refused the access token it had
        assert again["phase"] == "refreshed" and not again["isError"]
        refreshed = client.expect("refreshed")
        assert refreshed["access"] is True and refreshed["refresh"] is True
        [agent] = _agent_list(site)
        assert agent["agent"].startswith("ts-sdk-client-") and (agent["user"], agent["group"]) == ("ann", "research")

        client.expect("waiting")
        revoked = CliRunner().invoke(cli, ["agent", "revoke", agent["agent"], "--home", str(site.world.settings.home)])
        assert revoked.exit_code == 0, revoked.output
        client.send("go")
        asked_again = client.expect("authorize", timeout=30)  # its refresh token is dead too: sign in again
        assert asked_again["url"].startswith(site.server.base + "/authorize?")
        refused = client.expect("refused")
        assert refused["unauthorized"], refused
        assert client.wait() == 0
    assert len(person.answers) == 1
    tokens = json.loads(given.read_text())
    assert len(set(tokens)) == 4 and sorted(t[:4] for t in tokens) == ["cgo_", "cgo_", "cgr_", "cgr_"]
    assert_no_leak(site.server.stderr() + client.stderr(), site.ann, *tokens)


# -- mcp-remote, as Claude Desktop runs it, under the MCP Inspector's CLI ------------------------------


@dataclass
class Inspector:
    """The MCP Inspector's CLI with `mcp-remote` as its stdio server, pointed at `site`: mcp-remote keeps its
    state in `folder`/mcp-auth, listens for the browser on `callback_port` and opens `browser` (the opener
    script) when the person has to sign in. The Inspector's home is `folder`/home: nothing touches ours."""

    site: Site
    folder: Path
    browser: Path
    callback_port: int

    def run(self, *method: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        node = node_for_tests()
        command = [
            str(node),
            str(node_module("@modelcontextprotocol", "inspector", "clients", "launcher", "build", "index.js")),
            "--cli",
            "-e",
            f"MCP_REMOTE_CONFIG_DIR={self.folder / 'mcp-auth'}",
            "-e",
            f"BROWSER={self.browser}",
            "-e",
            "XDG_CURRENT_DESKTOP=X-Generic",  # xdg-open's generic way: $BROWSER
            str(node),
            str(node_module("mcp-remote", "dist", "proxy.js")),
            self.site.server.mcp_url,
            str(self.callback_port),  # its loopback listener's port (else one derived from the server's URL)
            *method,
        ]
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "MCP_CATALOG_PATH": str(home / "mcp.json")}
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.folder)

    def _state(self, name: str) -> Path:
        [path] = (self.folder / "mcp-auth").glob(f"mcp-remote-v1/*_{name}.json")
        return path

    def stored(self, name: str) -> dict[str, Any]:
        """What mcp-remote keeps: `tokens`, `client_info`."""
        found: dict[str, Any] = json.loads(self._state(name).read_text())
        return found

    def store(self, name: str, value: dict[str, Any]) -> None:
        self._state(name).write_text(json.dumps(value))


def _until(found: Callable[[], list[dict[str, Any]]], count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """`found()` once it has `count` entries (the opener writes after closing its browser, a moment after the
    client got its answer)."""
    deadline = time.monotonic() + timeout
    while len(entries := found()) < count:
        assert time.monotonic() < deadline, f"{len(entries)} of {count} entries after {timeout} s: {entries}"
        time.sleep(0.1)
    return entries


def test_mcp_remote_signs_in_through_the_browser_it_opens_and_serves_the_inspectors_tools_list_and_call(
    site: Site, tmp_path: Path
) -> None:
    browser_or_skip()
    port = free_port()
    callback = f"http://localhost:{port}/oauth/callback"  # mcp-remote's own, as it registers it
    browser, log = opener_script(tmp_path / "opener", site.ann, "research", callback)
    inspector = Inspector(site, tmp_path, browser, port)

    listed = inspector.run("--method", "tools/list")  # nobody signed in yet: mcp-remote opens the browser
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)["tools"]] == ["clock"]
    [visit] = _until(lambda: opened(log), 1)
    assert "error" not in visit, visit["error"]
    assert visit["opened"].startswith(site.server.base + "/authorize?")
    back = {k: v[0] for k, v in parse_qs(urlsplit(visit["redirect"]).query).items()}
    assert visit["redirect"].startswith(callback + "?") and back["code"] and back["iss"] == site.server.base
    assert "MCP CLI Proxy" in visit["consent"] and f"localhost:{port}" in visit["consent"]
    assert "Authorization successful" in visit["landing"]  # mcp-remote's own page: it took the code

    called = inspector.run("--method", "tools/call", "--tool-name", "clock")  # signed in: no browser
    assert called.returncode == 0, called.stderr
    answer = json.loads(called.stdout)
    assert answer["isError"] is False and "utc" in answer["structuredContent"]

    stored = inspector.stored("tokens")
    given = [stored["access_token"], stored["refresh_token"]]
    inspector.store("tokens", {**stored, "expires_at": int(time.time() * 1000) - 1})  # the hour is over
    again = inspector.run("--method", "tools/call", "--tool-name", "clock")
    assert again.returncode == 0, again.stderr
    fresh = inspector.stored("tokens")
    assert fresh["access_token"] not in given and fresh["refresh_token"] not in given  # it refreshed
    given += [fresh["access_token"], fresh["refresh_token"]]
    assert len(opened(log)) == 1

    [agent] = _agent_list(site)
    assert agent["client"] == inspector.stored("client_info")["client_id"]
    assert agent["agent"].startswith("mcp-cli-proxy-") and (agent["user"], agent["group"]) == ("ann", "research")
    revoked = CliRunner().invoke(cli, ["agent", "revoke", agent["agent"], "--home", str(site.world.settings.home)])
    assert revoked.exit_code == 0, revoked.output
    person = tmp_path / "opener" / "person.json"
    person.write_text(json.dumps({**json.loads(person.read_text()), "group": None}))  # asked again, ann says no
    refused = inspector.run("--method", "tools/call", "--tool-name", "clock")
    assert refused.returncode != 0 and "access_denied" in refused.stderr  # an error, not a hang
    assert "error=access_denied" in _until(lambda: opened(log), 2)[1]["redirect"]
    assert [a["agent"] for a in _agent_list(site)] == [agent["agent"]]
    output = "".join(run.stdout + run.stderr for run in (listed, called, again, refused))
    assert_no_leak(site.server.stderr(), site.ann, *given)
    assert_no_leak(output, site.ann)
