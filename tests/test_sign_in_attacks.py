"""Attacks on remote clients' sign-in (contract §6), each against a real `credgate serve --http`: a hostile
client, a hostile metadata document host, a hostile page or person in front of the browser.

The world: group `research` allows `clock`; `ann` is a member of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mcp_credgate import authorization
from mcp_credgate.authorization import AuthorizationServer
from tests.support.gateway import World
from tests.support.http_server import Server
from tests.support.sign_in import CALLBACK, HandFlow, clock_site, pkce_pair
from tests.test_sign_in import document_server

EVIL = "https://evil.example/cb"


@dataclass
class Site:
    world: World
    server: Server
    hand: HandFlow  # ann's browser and a client of hers


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with clock_site(tmp_path) as (world, server, ann):
        yield Site(world, server, HandFlow(server.base, ann))


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


# -- metadata documents: an unauthenticated request makes the server fetch and keep one ----------------


def _document_rows(world: World) -> int:
    return len([c for c in world.store._query("SELECT kind FROM oauth_clients", ()) if c["kind"] == "document"])


def test_documents_of_clients_that_never_sign_in_are_not_kept_without_bound(site: Site) -> None:
    # each new client_id URL at /authorize (or /token, /revoke: no sign-in needed) made a fetch and a row
    # kept for ever; a host serving documents at every path filled the store
    documents: dict[str, bytes] = {}
    with document_server(documents) as origin:
        _, challenge = pkce_pair()
        for i in range(5):
            site.hand.authorize(_document(documents, origin, f"/d{i}.json", [CALLBACK]), challenge)
        assert _document_rows(site.world) == 5
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(authorization, "MAX_UNUSED_CLIENTS", 5)
            server = AuthorizationServer(site.world.store, site.server.base, allow_loopback_documents=True)
            more = _document(documents, origin, "/more.json", [CALLBACK])
            assert anyio.run(server.get_client, more) is None  # full: not fetched, not kept
            assert _document_rows(site.world) == 5
            assert anyio.run(server.get_client, f"{origin}/d0.json") is not None  # one known still is
            patch.setattr(authorization, "UNUSED_CLIENT_SECONDS", -60)  # a day later: the unused are forgotten
            assert anyio.run(server.get_client, more) is not None
    assert _document_rows(site.world) == 1
