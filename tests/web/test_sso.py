"""Dashboard sign-in through the organisation's OpenID provider (issue 23), over HTTP: a real provider
(`oidc-provider` under Node, tests/support/oidc_provider.py), the real Starlette app with its test client, the
store on both backends. The browser's walk through the provider's pages is played by an httpx2 client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mcp_credgate import people
from mcp_credgate.sso import SsoSettings, new_flow
from mcp_credgate.web.app import build_dashboard_app
from mcp_credgate.web.pages.sso import FLOW_COOKIE
from mcp_credgate.web.session import COOKIE_NAME, new_admin_secret, open_flow, seal_flow
from tests.support.gateway import World, closed_port, make_canary, python_tool
from tests.support.oidc_provider import (
    Account,
    OidcProvider,
    callback_path,
    running_oidc_provider,
    sign_in_at_provider,
)
from tests.support.raw_db import holding_the_write_lock

BASE = "http://127.0.0.1:8765"
CLIENT_ID = "credgate-dashboard"
CLIENT_SECRET = make_canary("OIDC")
ALICE = Account("alice-sub", "Alice@Example.com", True, "alice", "Alice")
BOB = Account("bob-sub", "bob@example.com", False, "bob", "Bob")  # the provider has not verified his email
CAROL = Account("carol-sub", "carol@example.com", True, "carol.smith", "Carol Smith")  # no credgate user
DAVE = Account("dave-sub", "dave@example.com", True, "dave", "Dave")  # an admin user
ACCOUNTS = [ALICE, BOB, CAROL, DAVE]


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with running_oidc_provider(
        tmp_path_factory.mktemp("oidc"),
        ACCOUNTS,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[f"{BASE}/login/sso/callback"],
    ) as p:
        yield p


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World.create(tmp_path, {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    w.store.add_group("staff")
    people.create_user(w.store, "alice", email="alice@example.com")
    people.create_user(w.store, "bob", email="bob@example.com")
    yield w
    w.close()


@pytest.fixture
def admin_secret(world: World) -> str:
    return new_admin_secret(world.store)


def dashboard(world: World, provider: OidcProvider, default_group: str | None = None) -> Starlette:
    sso = SsoSettings(provider.issuer, CLIENT_ID, CLIENT_SECRET, default_group)
    return build_dashboard_app(replace(world.settings, sso=sso), world.catalog, host="127.0.0.1", port=8765)


@pytest.fixture
def app(world: World, provider: OidcProvider, admin_secret: str) -> Starlette:
    return dashboard(world, provider)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        yield c


def browser(app: Starlette, address: str = "198.51.100.7") -> TestClient:
    """Another browser, from another address (no lifespan: that one belongs to `client`)."""
    return TestClient(app, base_url=BASE, follow_redirects=False, client=(address, 50000))


def sso_sign_in(client: TestClient, account: Account, next_path: str = "/") -> httpx2.Response:
    """Start at /login/sso, sign in at the provider as `account`, and return credgate's answer to the callback."""
    start = client.get(f"/login/sso?next={quote(next_path, safe='')}")
    assert start.status_code == 303, start.text
    back = sign_in_at_provider(start.headers["location"], account.sub, BASE)
    return client.get(callback_path(back, BASE))


def test_the_login_page_offers_sso_through_the_providers_host(client: TestClient, provider: OidcProvider) -> None:
    page = client.get("/login?next=/me").text

    host = provider.issuer.removeprefix("http://")
    assert f'href="/login/sso?next=%2Fme">Sign in with SSO ({host})</a>' in page
    assert 'name="secret"' in page  # the secrets keep working beside it


def test_the_start_sends_the_browser_to_the_provider_with_pkce_state_and_nonce(
    client: TestClient, provider: OidcProvider
) -> None:
    start = client.get("/login/sso?next=/me")

    location = start.headers["location"]
    assert location.startswith(f"{provider.issuer}/auth?")
    for part in ("response_type=code", "code_challenge_method=S256", "state=", "nonce=", "scope=openid+email+profile"):
        assert part in location
    cookie = start.headers["set-cookie"]
    assert cookie.startswith(f"{FLOW_COOKIE}=") and "Path=/login/sso" in cookie and "SameSite=lax" in cookie
    assert "HttpOnly" in cookie


def test_a_verified_email_signs_in_its_user_who_reaches_their_own_page(
    client: TestClient, world: World, provider: OidcProvider
) -> None:
    answer = sso_sign_in(client, ALICE, "/me")

    assert answer.status_code == 200, answer.text
    assert "Signed in as <strong>alice</strong>" in answer.text
    assert '<meta http-equiv="refresh" content="0; url=\'/me\'">' in answer.text
    assert client.cookies[COOKIE_NAME].startswith("o1.alice.")
    me = client.get("/me")
    assert me.status_code == 200 and ">alice<" in me.text
    link = world.store.sso_link("alice")
    assert link is not None and (link.issuer, link.subject) == (provider.issuer, ALICE.sub)
    assert client.get("/credentials").status_code == 403  # alice is no admin


def test_an_email_only_at_the_userinfo_endpoint_is_found_there(world: World, tmp_path: Path, admin_secret: str) -> None:
    only_sub = running_oidc_provider(  # oidc-provider's default: the code flow's ID token carries `sub` alone
        tmp_path / "oidc",
        ACCOUNTS,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[f"{BASE}/login/sso/callback"],
        id_token_claims=False,
    )
    with only_sub as provider, TestClient(dashboard(world, provider), base_url=BASE, follow_redirects=False) as client:
        answer = sso_sign_in(client, ALICE)

        assert answer.status_code == 200, answer.text
        assert client.get("/me").status_code == 200
    assert world.store.sso_link("alice") is not None


def test_an_unverified_email_matches_no_user(client: TestClient, world: World) -> None:
    answer = sso_sign_in(client, BOB)

    assert answer.status_code == 403
    assert "No credgate user for this account (bob@example.com, whose email the provider has not verified)" in (
        answer.text
    )
    assert client.cookies.get(COOKIE_NAME) is None
    assert world.store.sso_link("bob") is None


def test_an_unknown_account_is_refused_saying_what_an_admin_can_do(client: TestClient, world: World) -> None:
    answer = sso_sign_in(client, CAROL)

    assert answer.status_code == 403
    assert "No credgate user for this account (carol@example.com); ask an admin: " in answer.text
    assert "credgate user add NAME --email carol@example.com" in answer.text
    assert not world.store.user_exists("carol-smith")


def test_a_sign_in_the_store_cannot_take_just_now_is_a_503_with_a_ref_not_a_refusal(
    client: TestClient, world: World
) -> None:
    with holding_the_write_lock(world.settings):  # for longer than the store's busy timeout
        answer = sso_sign_in(client, ALICE)

    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5", answer.text
    assert "cannot use its store just now; retry later (ref: " in answer.text
    assert "Not signed in" not in answer.text  # not a conflict of the account's: the cause is in the log
    assert "busy" not in answer.text and "locked" not in answer.text and str(world.settings.home) not in answer.text
    assert client.cookies.get(COOKIE_NAME) is None and world.store.sso_link("alice") is None
    assert sso_sign_in(client, ALICE).status_code == 200


def test_with_a_default_group_an_unknown_account_joins_it_as_a_new_user(
    world: World, provider: OidcProvider, admin_secret: str
) -> None:
    with TestClient(dashboard(world, provider, "staff"), base_url=BASE, follow_redirects=False) as client:
        answer = sso_sign_in(client, CAROL, "/me")

        assert answer.status_code == 200, answer.text
        assert client.get("/me").status_code == 200
    info = world.store.user("carol-smith")
    assert info.groups == ("staff",) and not info.admin and info.email == "carol@example.com"


def test_an_admin_user_signs_in_through_sso_as_an_admin(client: TestClient, world: World) -> None:
    people.create_user(world.store, "dave", admin=True, email="dave@example.com")

    assert sso_sign_in(client, DAVE).status_code == 200
    assert client.get("/credentials").status_code == 200


def test_the_admin_secret_still_signs_in_the_built_in_admin(client: TestClient, admin_secret: str) -> None:
    answer = client.post("/login", data={"secret": admin_secret})

    assert answer.status_code == 303
    assert client.get("/credentials").status_code == 200


def test_an_answer_without_its_flow_cookie_is_refused(client: TestClient, app: Starlette) -> None:
    start = client.get("/login/sso")
    back = sign_in_at_provider(start.headers["location"], ALICE.sub, BASE)

    other = browser(app)  # a victim's browser given the attacker's callback URL (login CSRF)
    answer = other.get(callback_path(back, BASE))

    assert answer.status_code == 400
    assert "belongs to no sign-in started in this browser" in answer.text
    assert other.cookies.get(COOKIE_NAME) is None


def test_an_answer_is_used_once(client: TestClient) -> None:
    start = client.get("/login/sso")
    flow_cookie = client.cookies.get(FLOW_COOKIE, path="/login/sso")
    assert flow_cookie is not None
    back = sign_in_at_provider(start.headers["location"], ALICE.sub, BASE)
    assert client.get(callback_path(back, BASE)).status_code == 200
    client.cookies.clear()

    client.cookies.set(FLOW_COOKIE, flow_cookie, path="/login/sso")
    replayed = client.get(callback_path(back, BASE))

    assert replayed.status_code == 401 and "invalid_grant" in replayed.text
    assert client.cookies.get(COOKIE_NAME) is None


def test_unlinking_the_account_or_turning_sso_off_ends_its_sessions(
    client: TestClient, world: World, provider: OidcProvider
) -> None:
    sso_sign_in(client, ALICE)
    cookie = client.cookies[COOKIE_NAME]
    assert client.get("/me").status_code == 200

    without_sso = build_dashboard_app(world.settings, world.catalog, host="127.0.0.1", port=8765)
    with TestClient(without_sso, base_url=BASE, follow_redirects=False, cookies={COOKIE_NAME: cookie}) as other:
        assert other.get("/me").status_code == 303  # to /login
        assert other.get("/login/sso").status_code == 404
    world.store.unlink_sso("alice")
    assert client.get("/me").status_code == 303


def test_a_new_sign_in_secret_leaves_the_users_sso_session_alone(client: TestClient, world: World) -> None:
    sso_sign_in(client, ALICE)

    people.renew_user_secret(world.store, "alice")

    assert client.get("/me").status_code == 200


def test_no_page_shows_the_client_secret(client: TestClient, world: World) -> None:
    texts = [sso_sign_in(client, ALICE).text, sso_sign_in(client, CAROL).text, client.get("/login").text]

    for text in texts:
        assert CLIENT_SECRET not in text


# -- limits ---------------------------------------------------------------------------------------------


def test_wrong_secrets_from_one_address_are_limited_and_other_addresses_are_not(
    client: TestClient, app: Starlette, admin_secret: str
) -> None:
    guesser, admin = browser(app, "203.0.113.5"), browser(app, "203.0.113.6")
    for _ in range(10):
        assert guesser.post("/login", data={"secret": "cga_guess"}).status_code == 401
    refused = guesser.post("/login", data={"secret": admin_secret})

    assert refused.status_code == 429 and "Too many failed sign-ins" in refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 900
    assert guesser.cookies.get(COOKIE_NAME) is None
    assert guesser.get("/login/sso").status_code == 429
    assert admin.post("/login", data={"secret": admin_secret}).status_code == 303  # break-glass still works


def test_refusals_of_one_provider_account_are_limited_from_every_address(client: TestClient, app: Starlette) -> None:
    for n in range(5):
        assert sso_sign_in(browser(app, f"192.0.2.{n}"), CAROL).status_code == 403
    fresh = browser(app, "192.0.2.99")
    answer = sso_sign_in(fresh, CAROL)

    assert answer.status_code == 429 and "refused sign-ins of this account" in answer.text
    assert sso_sign_in(fresh, ALICE).status_code == 200  # another account, the same address: not limited


# -- the flow between the two redirects -----------------------------------------------------------------


def test_the_answer_may_reach_another_replica_sharing_the_store(
    client: TestClient, world: World, provider: OidcProvider
) -> None:
    start = client.get("/login/sso?next=/me")
    back = sign_in_at_provider(start.headers["location"], ALICE.sub, BASE)
    flow_cookie = client.cookies.get(FLOW_COOKIE, path="/login/sso")
    assert flow_cookie is not None

    with TestClient(dashboard(world, provider), base_url=BASE, follow_redirects=False) as replica:
        replica.cookies.set(FLOW_COOKIE, flow_cookie, path="/login/sso")
        answer = replica.get(callback_path(back, BASE))

        assert answer.status_code == 200, answer.text
        assert replica.get("/me").status_code == 200


def test_the_flow_cookie_is_sealed_and_an_altered_one_opens_nothing(world: World) -> None:
    flow = new_flow("/me")
    sealed = seal_flow(world.store, flow)

    assert open_flow(world.store, sealed) == flow
    for secret in (flow.state, flow.nonce, flow.verifier):
        assert secret not in sealed
    altered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    assert open_flow(world.store, altered) is None
    assert open_flow(world.store, "") is None and open_flow(world.store, "%%%") is None


def test_a_provider_that_cannot_be_reached_is_said_on_one_line(world: World, admin_secret: str) -> None:
    sso = SsoSettings(f"http://127.0.0.1:{closed_port()}", CLIENT_ID, CLIENT_SECRET)
    app = build_dashboard_app(replace(world.settings, sso=sso), world.catalog, host="127.0.0.1", port=8765)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        answer = client.get("/login/sso")

        assert answer.status_code == 502
        assert "is unavailable: the provider&#39;s discovery document cannot be reached (ConnectError)." in answer.text
        assert client.post("/login", data={"secret": admin_secret}).status_code == 303
