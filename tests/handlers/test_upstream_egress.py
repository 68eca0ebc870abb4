"""Egress injection end to end (issue 27): a real gateway runs a Python upstream (tests/support/egress_upstream.py)
under `inject = "egress"` in its sandbox; the upstream calls a real HTTPS API on 127.0.0.1 under a host name of its
own with httpx, requests and urllib. The API sees the real token; the upstream holds only its placeholder (its
environment, command line, files and memory); its attempts to send the placeholder anywhere else are blocked and
audited; an echo of the token reaches the upstream as the placeholder and the agent as `[redacted:token]`.

The data, tools and state folders lie outside /tmp (`folder_outside_tmp`), as in the sandbox's own tests.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_credgate.credential import Credential
from mcp_credgate.handlers.egress import PLACEHOLDER_KEY_PURPOSE, EgressKit, stand_ins
from mcp_credgate.isolation import upstream_scope
from tests.support import SUPPORT_DIR
from tests.support.egress_api import Api, https_api
from tests.support.gateway import Transcript, World, assert_no_leak, connect, make_canary, result_text
from tests.support.sandbox import folder_outside_tmp

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.anyio,
]

API = "api.egress.test"
OTHER = "elsewhere.egress.test"
TOKEN = make_canary("EG")
UPSTREAM = SUPPORT_DIR / "egress_upstream.py"


def egress_decl(extra: str = "") -> str:
    return (
        'name = "eg"\ndescription = "An upstream that holds a placeholder."\n'
        '[credential]\ntype = "egtoken"\nfields = [{ name = "token", kind = "token" }]\n'
        f'[handler]\nkind = "mcp"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(str(UPSTREAM))}]\n'
        f'env = {{ API_TOKEN = "{{cred.token}}", API_URL = "https://{API}" }}\ntimeout = 40\nstart_timeout = 30\n'
        f'inject = "egress"\n{extra}[handler.egress]\nhosts = ["{API}"]\n'
    )


@pytest.fixture
def outside() -> Iterator[Path]:
    with folder_outside_tmp() as root:
        yield root


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with https_api(tmp_path_factory.mktemp("api"), [API, OTHER], TOKEN) as serving:
        yield serving


def egress_world(root: Path, monkeypatch: pytest.MonkeyPatch, api: Api) -> World:
    """Group g with the token bound; the gateway's egress proxies trust the API's CA and find its host names on
    127.0.0.1 (what DNS and the system's trust store do outside a test)."""
    monkeypatch.setenv("CREDGATE_STATE_DIR", str(root / "state"))
    made = EgressKit.new

    def new(*args: Any, **kwargs: Any) -> EgressKit:
        resolve = {API: ("127.0.0.1", api.port), OTHER: ("127.0.0.1", api.port)}
        return replace(made(*args, **kwargs), upstream_ca=api.ca_file, resolve=resolve)

    monkeypatch.setattr(EgressKit, "new", new)
    world = World.create(root, {"eg": egress_decl()})
    world.add_credential("tok", "egtoken", {"token": TOKEN})
    world.allow("g", "eg.*")
    world.bind("g", "eg", "tok")
    return world


def the_placeholder(world: World) -> str:
    """The placeholder group g's upstream holds for the token, as the gateway draws it."""
    spec = world.catalog.upstreams["eg"].credential
    assert spec is not None
    kit = EgressKit.new(world.store.derived_key(PLACEHOLDER_KEY_PURPOSE), lambda _: spec.fields)
    scope = upstream_scope("eg", "tok", group="g", agent=None, isolation="group")
    return stand_ins(kit, scope, Credential("tok", "egtoken", {"token": TOKEN}, frozenset({"token"})))["token"]


async def test_the_api_gets_the_real_token_while_the_upstream_holds_only_its_placeholder(
    outside: Path, monkeypatch: pytest.MonkeyPatch, api: Api
) -> None:
    world = egress_world(outside, monkeypatch, api)
    placeholder = the_placeholder(world)
    transcript = Transcript()

    with anyio.fail_after(120):
        async with world.gateway() as gw, gw.running(), connect(gw, "g") as agent:
            await transcript.list_tools(agent)
            calls = {c: await transcript.call(agent, "eg_call", {"client": c}) for c in ("httpx", "requests", "urllib")}
            held = json.loads(result_text(await transcript.call(agent, "eg_holds")))

    for client, result in calls.items():
        assert result_text(result).startswith("200 "), (client, result_text(result))
        assert "[redacted:token]" in result_text(result)  # the API echoed the token: the upstream saw a placeholder
    authorizations = [r["headers"].get("authorization") for r in api.received[-3:]]
    assert authorizations == [f"Bearer {TOKEN}"] * 3
    assert held["token"] != TOKEN and "HTTPS_PROXY" in held["variables"] and "SSL_CERT_FILE" in held["variables"]
    assert held["token"] == "[redacted:token]"  # the agent does not see the placeholder either
    assert placeholder not in transcript.text()
    assert_no_leak(transcript.text(), TOKEN)
    world.close()
