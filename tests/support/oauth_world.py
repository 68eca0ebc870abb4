"""A credgate world whose tools take OAuth2 credentials from the local provider (`tests.support.oauth_provider`).

`oauth_world` declares the tools (group `desk`), `add_acme` stores and binds tokens the provider really issued.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import mcp_types as types

from mcp_credgate import oauth
from tests.support.gateway import World, closed_port, load_json, python_tool, result_text
from tests.support.oauth_provider import OAuthProvider, oauth_tool
from tests.support.raw_db import raw_db

GROUP = "desk"
CRED = "acme-main"
DOWN_CRED = "acme-down"
HANDLERS_MODULE = "oauthgw_handlers"  # a module in the world's tools.d (found by `credgate serve` too)
HANDLERS = '''
import hashlib


def report(args, credential):
    """What the handler received: field names, the token's digest and the values that are not secret."""
    return {
        "fields": sorted(credential),
        "token_sha256": hashlib.sha256(credential["token"].encode()).hexdigest(),
        "client_id": credential.get("client_id"),
        "expires_at": credential.get("expires_at"),
    }


def careless(args, credential):
    """A handler that returns everything it was given."""
    return dict(credential)
'''
HANDLER_FIELDS = ["client_id", "expires_at", "refreshed_at", "scope", "token"]  # after a refresh


def acme_credential(provider: OAuthProvider, type_name: str = "acme", token_url: str | None = None) -> str:
    """The `[credential]` body of `oauth_tool(provider)` (the same fields, so tools can share the type)."""
    return (
        f'type = "{type_name}"\nfields = [\n'
        f'  {{ name = "token", kind = "oauth2", authorize_url = "{provider.authorize_url}", '
        f'token_url = "{token_url or provider.token_url}", scopes = ["read"] }},\n]'
    )


@contextmanager
def oauth_world(root: Path, provider: OAuthProvider) -> Iterator[World]:
    """Group `desk` may call:
    whoami       http, GET /api/whoami with `Authorization: Bearer <access token>` (type acme)
    report       python, reports what it received (type acme)
    careless     python, returns its whole credential (type acme)
    whoami_down  like whoami, but its token endpoint is a closed port (type acme_down)
    Nothing is bound yet (see `add_acme`)."""
    down_url = f"http://127.0.0.1:{closed_port()}/token"
    tools = {
        "whoami": oauth_tool(provider),
        "report": python_tool("report", f"{HANDLERS_MODULE}:report", credential=acme_credential(provider)),
        "careless": python_tool("careless", f"{HANDLERS_MODULE}:careless", credential=acme_credential(provider)),
        "whoami_down": oauth_tool(provider, "whoami_down", type_name="acme_down").replace(provider.token_url, down_url),
    }
    assert down_url in tools["whoami_down"]
    world = World.create(root, tools, files={f"{HANDLERS_MODULE}.py": HANDLERS})
    world.allow(GROUP, *tools)
    try:
        yield world
    finally:
        world.close()


def in_seconds(seconds: float) -> str:
    return oauth.iso(oauth.utc_now() + timedelta(seconds=seconds))


def add_acme(
    world: World,
    provider: OAuthProvider,
    *,
    expires_in: float | None,
    refresh: bool = True,
    name: str = CRED,
    type_name: str = "acme",
    tools: tuple[str, ...] = ("whoami", "report", "careless"),
) -> dict[str, str]:
    """Store tokens the provider really issued (as `cred add --from-json` would) and bind them; the values.
    `expires_in` None: no expires_at at all."""
    issued = provider.issue_tokens()
    values = {"client_id": provider.client_id, "token": issued["access_token"]}
    if provider.client_secret is not None:
        values["client_secret"] = provider.client_secret
    if refresh:
        values["refresh_token"] = issued["refresh_token"]
    if expires_in is not None:
        values["expires_at"] = in_seconds(expires_in)
    world.add_credential(name, type_name, values)
    for tool in tools:
        world.bind(GROUP, tool, name)
    return values


def stored(world: World, name: str = CRED) -> dict[str, str]:
    return dict(world.store.read_credential(name))


def ciphertexts(world: World, name: str = CRED) -> list[tuple[str, bytes]]:
    """The stored (field, ciphertext) rows of a credential, read from the database itself."""
    with raw_db(world.settings) as db:
        rows = db.execute(
            "SELECT v.field, v.ciphertext FROM credential_values v JOIN credentials c ON c.id = v.credential_id"
            " WHERE c.name = ? ORDER BY v.field",
            (name,),
        ).fetchall()
    return [(str(field), bytes(blob)) for field, blob in rows]


def expired_warning(tool: str = "whoami", name: str = CRED, credential_type: str = "acme") -> dict[str, Any]:
    return {
        "warning": "credential_expired",
        "tool": tool,
        "group": GROUP,
        "credential_type": credential_type,
        "missing_fields": [],
        "setup_url": f"http://127.0.0.1:8765/groups/{GROUP}/tools/{tool}/setup",
        "setup_command": f"credgate cred connect {name} --tool {tool}",
    }


def ok_answer(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result_text(result)
    answer: dict[str, Any] = load_json(result)
    return answer


def whoami_ok(result: types.CallToolResult) -> None:
    """The provider's /api/whoami accepted the access token the gateway sent."""
    answer = ok_answer(result)
    assert answer["ok"] is True and answer["scope"] == "read"
