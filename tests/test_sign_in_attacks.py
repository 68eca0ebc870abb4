"""Attacks on remote clients' sign-in (contract §6), each against a real `credgate serve --http`: a hostile
client, a hostile metadata document host, a hostile page or person in front of the browser.

The world: group `research` allows `clock`; `ann` is a member of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_credgate import people
from tests.support.gateway import World, python_tool
from tests.support.http_server import Server, start_server
from tests.support.sign_in import CALLBACK, HandFlow, pkce_pair
from tests.test_sign_in import document_server

EVIL = "https://evil.example/cb"


@dataclass
class Site:
    world: World
    server: Server
    hand: HandFlow  # ann's browser and a client of hers


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    world = World.create(tmp_path / "site", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    world.allow("research", "clock")
    ann = people.create_user(world.store, "ann")
    world.store.add_members("research", ["ann"])
    server = start_server(world, tmp_path / "server")
    try:
        yield Site(world, server, HandFlow(server.base, ann))
    finally:
        server.stop()
        world.close()


def _document(documents: dict[str, bytes], origin: str, path: str, redirect_uris: list[str]) -> str:
    client_id = f"{origin}{path}"
    documents[path] = json.dumps(
        {"client_id": client_id, "client_name": "Docs", "redirect_uris": redirect_uris}
    ).encode()
    return client_id


# -- the authorization endpoint as an open redirector (RFC 9700 §4.11.2) ----------------------------------


def test_an_authorization_error_is_not_redirected_to_a_web_client_no_user_has_approved(site: Site) -> None:
    # anyone may host a metadata document naming their own site as redirect URI: a link to credgate's
    # /authorize with a wrong parameter would send the browser there at once, with credgate's URL as the bait
    documents: dict[str, bytes] = {}
    with document_server(documents) as origin:
        client_id = _document(documents, origin, "/evil.json", [EVIL])
        _, challenge = pkce_pair()
        wrong_resource = site.hand.authorize(
            client_id, challenge, redirect_uri=EVIL, resource="https://other.example/mcp"
        )
        with site.hand.http() as http:
            no_pkce = http.get(
                "/authorize", params={"response_type": "code", "client_id": client_id, "redirect_uri": EVIL}
            )
    for answer in (wrong_resource, no_pkce):
        assert answer.status_code == 400 and "location" not in answer.headers
        assert answer.json()["error"] in ("invalid_target", "invalid_request")
    assert wrong_resource.json()["state"] == "s-123"


def test_an_authorization_error_still_goes_back_to_a_loopback_client(site: Site) -> None:
    client_id = site.hand.register()
    _, challenge = pkce_pair()
    answer = site.hand.authorize(client_id, challenge, resource="https://other.example/mcp")
    assert answer.status_code == 302 and answer.headers["location"].startswith(CALLBACK + "?error=invalid_target")
