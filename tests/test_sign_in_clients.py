"""Remote clients other than the Python SDK sign in to a real `credgate serve --http` (issue 23's tests with real
clients): the TypeScript SDK's OAuth client, and `mcp-remote` (what Claude Desktop runs to reach a remote server)
serving the MCP Inspector's CLI over stdio. A person answers the consent page in a real browser (chromium, driven
by Playwright); every Node program is pinned in tests/node.

The world: group `research` allows `clock` (no credential needed); `ann` is a member of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from mcp_credgate import people
from mcp_credgate.cli import cli
from tests.support.gateway import World, assert_no_leak, python_tool
from tests.support.http_server import Server, start_server
from tests.support.node import NODE_DIR, NodeLines
from tests.support.sign_in import CALLBACK, BrowserUser


@dataclass
class Site:
    world: World
    server: Server
    ann: str  # ann's sign-in secret


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    world = World.create(tmp_path / "site", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    world.allow("research", "clock")
    ann = people.create_user(world.store, "ann")
    world.store.add_members("research", ["ann"])
    server = start_server(world, tmp_path / "server")
    try:
        yield Site(world, server, ann)
    finally:
        server.stop()
        world.close()


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
        asked = client.expect("authorize")
        assert asked["url"].startswith(site.server.base + "/authorize?")
        client.send(_code(person.follow(asked["url"])))
        assert client.expect("connected")["tools"] == ["clock"]
        first = client.expect("called")
        assert first["phase"] == "first" and not first["isError"] and first["text"]

        again = client.expect("called")  # through the SDK's refresh: the server refused the access token it had
        assert again["phase"] == "refreshed" and not again["isError"]
        assert client.expect("refreshed") == {"event": "refreshed", "access": True, "refresh": True}
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
