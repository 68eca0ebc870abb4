"""Remote clients sign in the way MCP says (issue 23, contract §6): the SDK's own OAuth client against a real
`credgate serve --http`, with a person at a real browser (chromium, driven by Playwright) on the consent page.

The world: group `research` allows `clock` (no credential needed); `ann` is a member of it, `bob` of nothing.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_credgate import people
from mcp_credgate.cli import cli
from mcp_credgate.store import AgentInfo
from mcp_credgate.web.session import new_admin_secret
from tests.support.gateway import (
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    make_canary,
    python_tool,
    result_text,
)
from tests.support.http_server import Server, free_port, start_server
from tests.support.oidc_provider import Account, running_oidc_provider
from tests.support.raw_db import holding_the_write_lock
from tests.support.sign_in import (
    CALLBACK,
    BrowserUser,
    HandFlow,
    MemoryStorage,
    clock_site,
    oauth_provider,
    pkce_pair,
    signed_in_http,
)

pytestmark = pytest.mark.anyio
OIDC_SECRET = make_canary("OIDC")


@dataclass
class Site:
    world: World
    server: Server
    ann: str  # ann's sign-in secret
    bob: str


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with clock_site(tmp_path) as (world, server, ann):
        yield Site(world, server, ann, people.create_user(world.store, "bob"))


async def test_a_client_signs_in_on_the_consent_page_then_lists_and_calls_tools_as_an_agent_of_its_user(
    site: Site, tmp_path: Path
) -> None:
    storage = MemoryStorage()
    person = BrowserUser(site.ann, group="research", screenshots=tmp_path)
    provider = oauth_provider(site.server.mcp_url, person, storage)
    async with (
        signed_in_http(provider) as http,
        Client(streamable_http_client(site.server.mcp_url, http_client=http)) as client,
    ):
        tools = await client.list_tools()
        result = await client.call_tool("clock", {})
    assert [t.name for t in tools.tools] == ["clock"]
    assert not result.is_error and result_text(result)
    page = person.pages[0]
    assert "Test Client" in page and "name given by the client itself" in page and "registered just now" in page
    assert "127.0.0.1:47913" in page
    [agent] = [a for a in site.world.store.list_agents() if a.kind == "oauth"]
    assert storage.client_info is not None and storage.tokens is not None
    assert agent.client == storage.client_info.client_id
    assert (agent.user, agent.group) == ("ann", "research")
    assert agent.name.startswith("test-client-") and len(agent.name) == len("test-client-") + 6
    assert storage.tokens.access_token.startswith("cgo_") and storage.tokens.refresh_token
    assert storage.tokens.expires_in == 3600

    first = storage.tokens
    provider.context.token_expiry_time = time.time() - 1  # the hour is over: the client refreshes, no browser
    async with (
        signed_in_http(provider) as http,
        Client(streamable_http_client(site.server.mcp_url, http_client=http)) as client,
    ):
        assert not (await client.call_tool("clock", {})).is_error
    assert storage.tokens.access_token != first.access_token and storage.tokens.refresh_token != first.refresh_token
    assert len(person.answers) == 1

    site.world.store.revoke_agent(agent.name)  # an admin ends it; the person, asked again, says no
    person.group = None
    with pytest.raises(Exception) as refused:
        async with (
            signed_in_http(provider) as http,
            Client(streamable_http_client(site.server.mcp_url, http_client=http)) as client,
        ):
            await client.list_tools()
    assert "access_denied" in repr(refused.value) or "access_denied" in str(refused.value.__cause__)
    assert len(person.answers) == 2 and "error=access_denied" in person.answers[1]


@pytest.fixture
def hand(site: Site) -> HandFlow:
    return HandFlow(site.server.base, site.ann)


def _redirect_query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _oauth_agents(site: Site) -> list[AgentInfo]:
    return [a for a in site.world.store.list_agents() if a.kind == "oauth"]


# -- what a client discovers -----------------------------------------------------------------------


def test_a_401_names_the_resource_metadata_which_names_credgate_as_the_authorization_server(site: Site) -> None:
    base = site.server.base
    with httpx2.Client(base_url=base) as http:
        refused = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        sse = http.get("/sse")
        resource = http.get("/.well-known/oauth-protected-resource").json()
        under_mcp = http.get("/.well-known/oauth-protected-resource/mcp").json()
        server = http.get("/.well-known/oauth-authorization-server").json()
    for answer in (refused, sse):
        assert answer.status_code == 401
        assert f'resource_metadata="{base}/.well-known/oauth-protected-resource"' in answer.headers["www-authenticate"]
    assert resource == under_mcp
    assert resource["resource"] == f"{base}/mcp" and resource["authorization_servers"] == [base]
    assert server["issuer"] == base
    assert server["code_challenge_methods_supported"] == ["S256"]
    assert server["authorization_response_iss_parameter_supported"] is True
    assert server["client_id_metadata_document_supported"] is True
    assert server["registration_endpoint"] == f"{base}/register"
    assert server["revocation_endpoint"] == f"{base}/revoke"
    assert server["token_endpoint_auth_methods_supported"] == ["none"]


def test_the_authorization_response_carries_the_state_and_the_issuer(site: Site, hand: HandFlow) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    started = hand.authorize(client_id, challenge)
    back = _redirect_query(hand.consent(started.headers["location"], "research"))
    assert back["state"] == "s-123" and back["iss"] == site.server.base and back["code"]


def test_a_registered_client_is_public_and_its_answer_holds_no_secret(hand: HandFlow) -> None:
    with hand.http() as http:
        answer = http.post("/register", json={"client_name": "x", "redirect_uris": [CALLBACK]}).json()
    assert answer["token_endpoint_auth_method"] == "none" and "client_secret" not in answer


# -- the grant's life: refresh, revoke, membership -------------------------------------------------


def test_a_registration_the_store_cannot_take_just_now_is_a_503_a_browser_based_client_can_read(
    site: Site, hand: HandFlow
) -> None:
    """/register is called from the client's own origin (CORS): its 503 carries the CORS headers too, or the
    browser would show the client a network error instead of "retry later"."""
    origin = {"Origin": "https://app.example"}
    with holding_the_write_lock(site.world.settings), hand.http() as http:
        refused = http.post("/register", json={"client_name": "B", "redirect_uris": [CALLBACK]}, headers=origin)

    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5", refused.text
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    assert "retry later (ref: " in refused.text
    assert hand.register() != ""


def test_tokens_refresh_by_rotation_and_a_refresh_token_used_twice_revokes_the_whole_grant(
    site: Site, hand: HandFlow
) -> None:
    client_id, first = hand.tokens()
    second = hand.refresh(client_id, first["refresh_token"])
    assert second.status_code == 200, second.text
    fresh = second.json()
    assert fresh["access_token"] != first["access_token"] and fresh["refresh_token"] != first["refresh_token"]
    assert hand.mcp_status(fresh["access_token"]).status_code == 200
    replayed = hand.refresh(client_id, first["refresh_token"])
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"
    assert hand.mcp_status(fresh["access_token"]).status_code == 401  # the family went with it
    assert hand.refresh(client_id, fresh["refresh_token"]).status_code == 400
    [agent] = _oauth_agents(site)
    assert agent.revoked_at is not None


def test_agent_revoke_ends_a_grant_at_its_next_request(site: Site, hand: HandFlow) -> None:
    client_id, tokens = hand.tokens()
    assert hand.mcp_status(tokens["access_token"]).status_code == 200
    [agent] = _oauth_agents(site)
    result = CliRunner().invoke(cli, ["agent", "revoke", agent.name, "--home", str(site.world.settings.home)])
    assert result.exit_code == 0, result.output
    refused = hand.mcp_status(tokens["access_token"])
    assert refused.status_code == 401 and "resource_metadata" in refused.headers["www-authenticate"]
    assert hand.refresh(client_id, tokens["refresh_token"]).status_code == 400


def test_leaving_the_group_or_being_removed_ends_a_grant(site: Site, hand: HandFlow) -> None:
    _, tokens = hand.tokens()
    site.world.store.remove_members("research", ["ann"])
    assert hand.mcp_status(tokens["access_token"]).status_code == 401
    site.world.store.add_members("research", ["ann"])
    _, tokens = hand.tokens()
    site.world.store.remove_user("ann")
    assert hand.mcp_status(tokens["access_token"]).status_code == 401


def test_the_client_revokes_its_own_sign_in(site: Site, hand: HandFlow) -> None:
    client_id, tokens = hand.tokens()
    with hand.http() as http:
        answer = http.post("/revoke", data={"token": tokens["refresh_token"], "client_id": client_id})
    assert answer.status_code == 200
    assert hand.mcp_status(tokens["access_token"]).status_code == 401


def test_agent_list_shows_a_grant_as_an_oauth_agent_with_its_client_user_and_group(site: Site, hand: HandFlow) -> None:
    client_id, tokens = hand.tokens(name="Claude Desktop")
    hand.mcp_status(tokens["access_token"])
    result = CliRunner().invoke(cli, ["agent", "list", "--json", "--home", str(site.world.settings.home)])
    [entry] = [a for a in json.loads(result.output) if a["kind"] == "oauth"]
    assert entry["agent"].startswith("claude-desktop-") and entry["client"] == client_id
    assert (entry["user"], entry["group"]) == ("ann", "research") and entry["last_used_at"] is not None


def test_denying_on_the_consent_page_tells_the_client_and_makes_nothing(site: Site, hand: HandFlow) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    back = _redirect_query(hand.consent(hand.authorize(client_id, challenge).headers["location"], None))
    assert back["error"] == "access_denied" and back["state"] == "s-123" and "code" not in back
    assert _oauth_agents(site) == []


def test_a_user_cannot_allow_a_group_they_are_not_in(site: Site, hand: HandFlow) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    consent_url = hand.authorize(client_id, challenge).headers["location"]
    with pytest.raises(AssertionError, match="not a member of group"):
        hand.consent(consent_url, "research", secret=site.bob)
    assert _oauth_agents(site) == []


# -- attacks ---------------------------------------------------------------------------------------


def test_a_code_replayed_is_refused_and_revokes_what_it_gave(site: Site, hand: HandFlow) -> None:
    client_id = hand.register()
    verifier, challenge = pkce_pair()
    code = hand.code(client_id, challenge)
    first = hand.exchange(client_id, code, verifier)
    assert first.status_code == 200
    again = hand.exchange(client_id, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert hand.mcp_status(first.json()["access_token"]).status_code == 401


def test_a_code_for_another_client_is_refused(hand: HandFlow) -> None:
    mine, other = hand.register(), hand.register()
    verifier, challenge = pkce_pair()
    code = hand.code(mine, challenge)
    stolen = hand.exchange(other, code, verifier)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert hand.exchange(mine, code, verifier).status_code == 200  # the rightful client still can


def test_a_wrong_pkce_verifier_is_refused(hand: HandFlow) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    wrong, _ = pkce_pair()
    answer = hand.exchange(client_id, hand.code(client_id, challenge), wrong)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_an_authorization_without_pkce_or_with_plain_pkce_is_refused(hand: HandFlow) -> None:
    client_id = hand.register()
    with hand.http() as http:
        bare = http.get(
            "/authorize", params={"response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK}
        )
        plain = http.get(
            "/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": CALLBACK,
                "code_challenge": "x" * 43,
                "code_challenge_method": "plain",
            },
        )
    for answer in (bare, plain):
        assert answer.status_code in (302, 400)
        assert (
            "error=invalid_request" in answer.headers.get("location", "") or answer.json()["error"] == "invalid_request"
        )


def test_a_redirect_uri_that_is_not_registered_is_refused_without_a_redirect(hand: HandFlow) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    answer = hand.authorize(client_id, challenge, redirect_uri="https://evil.example/callback")
    assert answer.status_code == 400 and "location" not in answer.headers


def test_a_loopback_redirect_uri_matches_on_any_port_but_nothing_else_differs(hand: HandFlow) -> None:
    client_id = hand.register(["http://127.0.0.1:1000/callback"])
    _, challenge = pkce_pair()
    assert hand.authorize(client_id, challenge, redirect_uri="http://127.0.0.1:5555/callback").status_code == 302
    assert hand.authorize(client_id, challenge, redirect_uri="http://127.0.0.1:5555/other").status_code == 400
    assert hand.authorize(client_id, challenge, redirect_uri="http://localhost:5555/callback").status_code == 400


def test_a_token_for_another_resource_is_refused_at_authorize_token_and_every_request(
    site: Site, hand: HandFlow, tmp_path: Path
) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    elsewhere = hand.authorize(client_id, challenge, resource="https://other.example/mcp")
    assert _redirect_query(elsewhere.headers["location"])["error"] == "invalid_target"
    verifier, challenge = pkce_pair()
    code = hand.code(client_id, challenge)
    wrong = hand.token(
        grant_type="authorization_code",
        client_id=client_id,
        code=code,
        code_verifier=verifier,
        redirect_uri=CALLBACK,
        resource="https://other.example/mcp",
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_target"
    _, tokens = hand.tokens()
    # the same store served under another public URL is another resource: this token is not for it
    other = start_server(site.world, tmp_path / "other", "--public-url", "http://localhost:9/")
    try:
        assert HandFlow(other.base, site.ann).mcp_status(tokens["access_token"]).status_code in (401, 403)
    finally:
        other.stop()


def test_a_consent_post_without_its_csrf_token_or_from_another_origin_is_refused(site: Site, hand: HandFlow) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    consent_url = hand.authorize(client_id, challenge).headers["location"]
    with hand.http() as http:
        http.post("/login", data={"secret": site.ann})
        page = http.get(consent_url).text
        sealed = re.search(r'name="request" value="([^"]*)"', page)
        assert sealed is not None
        form = {"request": html.unescape(sealed.group(1)), "decision": "allow", "group": "research"}
        no_csrf = http.post("/oauth/consent", data=form)
        csrf = re.search(r'name="csrf" value="([^"]*)"', page)
        assert csrf is not None
        foreign = http.post(
            "/oauth/consent", data={**form, "csrf": csrf.group(1)}, headers={"Origin": "https://evil.example"}
        )
    assert no_csrf.status_code == 403 and foreign.status_code == 403
    assert _oauth_agents(site) == [] and "code=" not in no_csrf.headers.get("location", "")


def test_a_tampered_or_expired_consent_request_is_refused(site: Site, hand: HandFlow) -> None:
    client_id = hand.register()
    _, challenge = pkce_pair()
    consent_url = hand.authorize(client_id, challenge).headers["location"]
    tampered = consent_url.replace("request=", "request=A")
    with hand.http() as http:
        http.post("/login", data={"secret": site.ann})
        assert http.get(tampered).status_code == 400


# -- registration ----------------------------------------------------------------------------------


def test_registration_takes_only_loopback_redirect_uris_by_default(hand: HandFlow) -> None:
    with hand.http() as http:
        answer = http.post("/register", json={"client_name": "web", "redirect_uris": ["https://app.example/cb"]})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_redirect_uri"
    assert "--registration open" in answer.json()["error_description"]


def test_registration_is_rate_limited_per_client_address(hand: HandFlow) -> None:
    with hand.http() as http:
        answers = [
            http.post("/register", json={"client_name": f"c{i}", "redirect_uris": [CALLBACK]}).status_code
            for i in range(12)
        ]
    assert answers[:10] == [201] * 10 and answers[10:] == [429, 429]


def test_registration_open_takes_https_redirects_and_off_has_no_endpoint(site: Site, tmp_path: Path) -> None:
    opened = start_server(site.world, tmp_path / "open", "--registration", "open")
    closed = start_server(site.world, tmp_path / "off", env={"CREDGATE_REGISTRATION": "off"})
    try:
        with httpx2.Client(base_url=opened.base) as http:
            made = http.post("/register", json={"client_name": "w", "redirect_uris": ["https://app.example/cb"]})
            javascript = http.post("/register", json={"client_name": "j", "redirect_uris": ["javascript:alert(1)"]})
        with httpx2.Client(base_url=closed.base) as http:
            gone = http.post("/register", json={"client_name": "w", "redirect_uris": [CALLBACK]})
            metadata = http.get("/.well-known/oauth-authorization-server").json()
    finally:
        opened.stop()
        closed.stop()
    assert made.status_code == 201 and javascript.status_code == 400
    assert gone.status_code in (404, 405) and "registration_endpoint" not in metadata


# -- what is kept ----------------------------------------------------------------------------------


def test_codes_and_tokens_are_kept_only_as_hashes_and_never_logged(site: Site, hand: HandFlow) -> None:
    client_id = hand.register()
    verifier, challenge = pkce_pair()
    code = hand.code(client_id, challenge)
    tokens = hand.exchange(client_id, code, verifier).json()
    hand.refresh(client_id, tokens["refresh_token"])
    plain = [code, verifier, tokens["access_token"], tokens["refresh_token"]]
    assert_no_leak_at_rest(site.world.settings, *plain)
    assert_no_leak(site.server.output(), *plain)


# -- where it is on ------------------------------------------------------------------------------


def test_sign_in_is_off_where_the_public_url_is_plain_http_beyond_loopback(site: Site, tmp_path: Path) -> None:
    server = start_server(site.world, tmp_path / "plain", "--public-url", "http://gateway.example")
    try:
        with httpx2.Client(base_url=server.base) as http:
            refused = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            metadata = http.get("/.well-known/oauth-authorization-server")
    finally:
        server.stop()
    assert refused.status_code == 401 and "resource_metadata" not in refused.headers["www-authenticate"]
    assert metadata.status_code == 404
    assert "OAuth sign-in for remote clients is off: the public URL http://gateway.example is not https" in (
        server.stderr()
    )


def test_listening_beyond_loopback_needs_an_agent_or_a_member_who_can_sign_in(tmp_path: Path) -> None:
    world = World.create(tmp_path / "w", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    try:
        world.allow("research", "clock")
        home = ["--home", str(world.settings.home), "--tools-dir", str(world.tools_dir)]
        refused = CliRunner().invoke(cli, ["serve", "--http", "--host", "192.0.2.1", *home])
        assert refused.exit_code == 1
        assert "no agent and no member of a group to sign in" in refused.output
    finally:
        world.close()


def test_every_replica_takes_every_token_at_once_and_a_revocation_on_one_holds_on_all(
    site: Site, hand: HandFlow, tmp_path: Path
) -> None:
    # a second replica on the same store (PostgreSQL, or the same data folder), behind the same public URL
    replica = start_server(site.world, tmp_path / "replica", "--public-url", site.server.base)
    try:
        other = HandFlow(replica.base, site.ann)
        client_id, tokens = hand.tokens()  # signed in on the first
        assert other.mcp_status(tokens["access_token"]).status_code == 200
        refreshed = other.refresh(client_id, tokens["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        assert hand.refresh(client_id, tokens["refresh_token"]).status_code == 400  # reuse, seen by the first
        assert other.mcp_status(refreshed.json()["access_token"]).status_code == 401
    finally:
        replica.stop()


# -- clients known by their metadata document --------------------------------------------------------


@contextmanager
def document_server(documents: dict[str, bytes]) -> Iterator[str]:
    """A web server on 127.0.0.1 serving `documents` (path → body) as JSON: a client's own site."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = documents.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            with suppress(OSError):  # the reader stopped reading (a document over the cap)
                self.wfile.write(body or b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_client_known_by_its_metadata_document_signs_in_without_registering(site: Site, hand: HandFlow) -> None:
    documents: dict[str, bytes] = {}
    with document_server(documents) as origin:
        client_id = f"{origin}/oauth/client.json"
        documents["/oauth/client.json"] = json.dumps(
            {"client_id": client_id, "client_name": "Doc Client", "redirect_uris": [CALLBACK]}
        ).encode()
        verifier, challenge = pkce_pair()
        started = hand.authorize(client_id, challenge)
        assert started.status_code == 302, started.text
        with hand.http() as http:
            http.post("/login", data={"secret": site.ann})
            page = http.get(started.headers["location"]).text
        assert "Doc Client" in page and "(its metadata document)" in page and origin.removeprefix("http://") in page
        answer = hand.exchange(client_id, hand.code(client_id, challenge), verifier)
    assert answer.status_code == 200, answer.text
    [agent] = _oauth_agents(site)
    assert agent.client == client_id and agent.name.startswith("doc-client-")


@pytest.mark.parametrize(
    "client_id",
    [
        "https://10.0.0.7/oauth/client.json",  # a private address
        "https://169.254.169.254/latest/meta-data",  # the cloud's metadata service
        "https://localhost/oauth/client.json",
    ],
)
def test_a_metadata_document_url_at_a_private_address_is_never_fetched(hand: HandFlow, client_id: str) -> None:
    _, challenge = pkce_pair()
    answer = hand.authorize(client_id, challenge)
    assert answer.status_code == 400 and "not found" in answer.json()["error_description"]


def test_a_ten_megabyte_metadata_document_is_refused_quickly(hand: HandFlow, site: Site) -> None:
    with document_server({"/big.json": b"{" + b" " * 10_000_000 + b"}"}) as origin:
        _, challenge = pkce_pair()
        began = time.monotonic()
        answer = hand.authorize(f"{origin}/big.json", challenge)
    assert answer.status_code == 400 and time.monotonic() - began < 5
    assert "client metadata document at 127.0.0.1" in site.server.stderr()


async def test_the_consent_page_signs_the_user_in_through_the_organisations_openid_provider(tmp_path: Path) -> None:
    port = free_port()
    world = World.create(tmp_path / "site", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    world.allow("research", "clock")
    people.create_user(world.store, "alice", email="alice@example.com")
    world.store.add_members("research", ["alice"])
    alice = Account("alice-sub", "alice@example.com", True, "alice", "Alice Example")
    redirect = f"http://127.0.0.1:{port}/login/sso/callback"
    with running_oidc_provider(
        tmp_path / "oidc", [alice], client_id="credgate", client_secret=OIDC_SECRET, redirect_uris=[redirect]
    ) as provider:
        env = {
            "CREDGATE_OIDC_ISSUER": provider.issuer,
            "CREDGATE_OIDC_CLIENT_ID": "credgate",
            "CREDGATE_OIDC_CLIENT_SECRET": OIDC_SECRET,
        }
        server = start_server(world, tmp_path / "server", port=port, env=env)
        try:
            person = BrowserUser("", group="research", sso_account=alice.sub)
            client_auth = oauth_provider(server.mcp_url, person)
            async with (
                signed_in_http(client_auth) as http,
                Client(streamable_http_client(server.mcp_url, http_client=http)) as client,
            ):
                assert [t.name for t in (await client.list_tools()).tools] == ["clock"]
            [agent] = [a for a in world.store.list_agents() if a.kind == "oauth"]
            assert (agent.user, agent.group) == ("alice", "research")
        finally:
            server.stop()
            world.close()


def test_the_dashboards_agents_page_shows_a_sign_in_as_an_oauth_agent_of_its_user(site: Site, hand: HandFlow) -> None:
    hand.tokens(name="Cursor")
    secret = new_admin_secret(site.world.store)
    with hand.http() as http:
        http.post("/login", data={"secret": secret})
        page = http.get("/agents").text
    assert "OAuth sign-in" in page and re.search(r"cursor-[0-9a-f]{6}", page) and "<td>ann</td>" in page
