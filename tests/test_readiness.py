"""One answer to "is this tool ready for this group?", whichever surface asks.

For every status a binding can be in, `tools/list` (the not-set-up note), `credgate group show --json`, the
dashboard's group page and `tools/call` (the warning, or a run) must say the same thing. Each status is made
the way a user makes it: a credential never bound, a declaration that later asks for one more field or names
another type, an OAuth2 token that expired with nothing to refresh it, a complete credential.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from mcp_credgate.cli import cli
from mcp_credgate.declarations import load_catalog
from mcp_credgate.server import NOT_READY_NOTE
from mcp_credgate.web.app import build_dashboard_app
from mcp_credgate.web.session import new_admin_secret
from tests.support.gateway import World, connect, python_tool

pytestmark = pytest.mark.anyio

GROUP = "team"
HANDLERS = "def ok(args, credential):\n    return {'ok': True}\n"
KEY_FIELDS = 'fields = [ { name = "key", kind = "api_key" } ]'
OAUTH_FIELDS = (
    'fields = [ { name = "token", kind = "oauth2", authorize_url = "https://id.example/authorize", '
    'token_url = "https://id.example/token", scopes = ["read"] } ]'
)


def keyed(type_name: str, fields: str = KEY_FIELDS) -> str:
    return f'type = "{type_name}"\n{fields}'


# tool -> (the status every surface must report, the warning its call must give: None when it runs)
EXPECTED: dict[str, tuple[str, str | None]] = {
    "clock": ("no_credential_needed", None),
    "unbound": ("needs_credential", "missing_credential"),
    "grown": ("incomplete", "missing_credential"),
    "retyped": ("invalid", "credential_invalid"),
    "lapsed": ("expired", "credential_expired"),
    "good": ("ready", None),
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    tools = {
        "clock": python_tool("clock", "readiness_handlers:ok"),
        "unbound": python_tool("unbound", "readiness_handlers:ok", credential=keyed("plain")),
        "grown": python_tool("grown", "readiness_handlers:ok", credential=keyed("growing")),
        "retyped": python_tool("retyped", "readiness_handlers:ok", credential=keyed("first")),
        "lapsed": python_tool("lapsed", "readiness_handlers:ok", credential=keyed("acme", OAUTH_FIELDS)),
        "good": python_tool("good", "readiness_handlers:ok", credential=keyed("plain")),
    }
    w = World.create(tmp_path, tools, {"readiness_handlers.py": HANDLERS})
    w.add_credential("plain-1", "plain", {"key": "k-plain-0001"})
    w.add_credential("growing-1", "growing", {"key": "k-growing-01"})
    w.add_credential("first-1", "first", {"key": "k-first-0001"})
    # An access token that expired an hour ago, with no refresh token to renew it.
    w.add_credential("acme-1", "acme", {"token": "at-0001", "client_id": "cid", "expires_at": "2001-01-01T00:00:00Z"})
    w.allow(GROUP, *EXPECTED)
    for tool, cred in [("good", "plain-1"), ("grown", "growing-1"), ("retyped", "first-1"), ("lapsed", "acme-1")]:
        w.bind(GROUP, tool, cred)
    # The declarations change after the bindings were made: one more required field, another type.
    two_fields = 'fields = [ { name = "key", kind = "api_key" }, { name = "region", kind = "text" } ]'
    (w.tools_dir / "grown.toml").write_text(
        python_tool("grown", "readiness_handlers:ok", credential=keyed("growing", two_fields))
    )
    (w.tools_dir / "retyped.toml").write_text(
        python_tool("retyped", "readiness_handlers:ok", credential=keyed("second"))
    )
    w.catalog = load_catalog(w.settings.tools_dirs)
    assert not w.catalog.problems, w.catalog.problems
    yield w
    w.close()


async def listed_ready(world: World) -> dict[str, bool]:
    async with world.gateway() as gateway, connect(gateway, GROUP) as client:
        tools = (await client.list_tools()).tools
    return {t.name: not (t.description or "").endswith(NOT_READY_NOTE) for t in tools}


async def call_warnings(world: World) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    async with world.gateway() as gateway, connect(gateway, GROUP) as client:
        for tool in EXPECTED:
            result = await client.call_tool(tool, {})
            warning = (result.structured_content or {}).get("warning")
            assert bool(result.is_error) == (warning is not None), (tool, result)
            found[tool] = warning
    return found


def shown_statuses(world: World) -> dict[str, str]:
    result = CliRunner().invoke(cli, [*world.cli_paths, "--json", "group", "show", GROUP])
    assert result.exit_code == 0, result.output
    return {t["tool"]: t["status"] for t in json.loads(result.output)["tools"]}


def dashboard_statuses(world: World) -> dict[str, str]:
    secret = new_admin_secret(world.store)
    app = build_dashboard_app(world.settings, world.catalog, host="127.0.0.1", port=8765)
    with TestClient(app, base_url="http://127.0.0.1:8765", follow_redirects=False) as browser:
        assert browser.post("/login", data={"secret": secret}).status_code == 303
        page = browser.get(f"/groups/{GROUP}").text
    rows = re.findall(r'<td><code>([^<]+)</code>.*?<span class="status status-([a-z_]+)">', page, re.S)
    return dict(rows)


async def test_every_surface_gives_the_same_status_for_every_kind_of_binding(world: World) -> None:
    statuses = {tool: status for tool, (status, _) in EXPECTED.items()}
    assert shown_statuses(world) == statuses
    assert dashboard_statuses(world) == statuses
    assert await listed_ready(world) == {
        tool: status in ("ready", "no_credential_needed") for tool, status in statuses.items()
    }
    assert await call_warnings(world) == {tool: warning for tool, (_, warning) in EXPECTED.items()}


async def test_an_expired_token_without_a_refresh_token_is_not_listed_as_ready(world: World) -> None:
    """The bug the verdict fixes: `tools/list` compared field names only and called this one ready."""
    assert (await listed_ready(world))["lapsed"] is False
