"""A user's own dashboard (contract §5): signing in with a `cgu_` secret, My tools and My credentials, the
personal setup page that opens for its user alone, and every way to reach another's credential refused (IDOR by
name, by a forged form, by another user's URL). Real app (Starlette's TestClient), real store, canary keys."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mcp_credgate import admin, people
from mcp_credgate.web.app import build_dashboard_app
from mcp_credgate.web.session import COOKIE_NAME, new_admin_secret
from tests.support.gateway import World, leaks, make_canary

BASE = "http://127.0.0.1:8765"
KEY_CRED = (
    'type = "weatherkey"\nfields = [ { name = "api_key", kind = "api_key", pattern = \'^wk_[A-Za-z0-9]{8,}$\' } ]'
)
TOOL = (
    'name = "weather"\ndescription = "The weather."\n[input_schema]\ntype = "object"\n'
    f"[credential]\n{KEY_CRED}\n"
    '[handler]\nkind = "http"\nmethod = "GET"\nurl = "https://weather.example.com/now"\n'
    'headers = { X-Key = "{cred.api_key}" }\n'
)
ALICE_KEY, BOB_KEY, NEW_KEY = "wk_" + make_canary("AK"), "wk_" + make_canary("BK"), "wk_" + make_canary("NK")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Group team (alice and bob members) allows weather as personal; alice has her own key bound."""
    w = World.create(tmp_path, {"weather": TOOL})
    w.store.add_group("team")
    w.store.add_group("other")
    admin.allow(w.store, w.catalog, "team", ["weather"], personal=True)
    admin.allow(w.store, w.catalog, "other", ["weather"], personal=True)
    spec = w.catalog.types["weatherkey"]
    yield w
    del spec
    w.close()


@dataclass
class Browser:
    client: TestClient

    def csrf(self, path: str = "/me") -> str:
        found = re.search(r'name="csrf" value="([^"]*)"', self.client.get(path).text)
        assert found, "no CSRF token"
        return found.group(1)

    def get(self, path: str) -> httpx2.Response:
        return self.client.get(path)

    def post(self, path: str, data: Mapping[str, str]) -> httpx2.Response:
        return self.client.post(path, data={"csrf": self.csrf(), **data})


@pytest.fixture
def app(world: World) -> Iterator[Starlette]:
    yield build_dashboard_app(world.settings, world.catalog, host="127.0.0.1", port=8765)


@pytest.fixture
def secrets(world: World) -> dict[str, str]:
    found = {name: people.create_user(world.store, name) for name in ("alice", "bob", "carol")}
    world.store.add_members("team", ["alice", "bob"])
    admin.add_credential(world.store, world.catalog.types["weatherkey"], "alice-wk", {"api_key": ALICE_KEY}, "alice")
    admin.add_credential(world.store, world.catalog.types["weatherkey"], "bob-wk", {"api_key": BOB_KEY}, "bob")
    people.bind_personal(world.store, world.catalog, "team", "weather", "alice-wk", "alice")
    found["admin"] = new_admin_secret(world.store)
    return found


def browser(app: Starlette, secret: str) -> Browser:
    client = TestClient(app, base_url=BASE, follow_redirects=False)
    response = client.post("/login", data={"secret": secret})
    assert response.status_code == 303, response.text
    assert client.cookies.get(COOKIE_NAME)
    return Browser(client)


def test_a_user_signs_in_with_their_secret_and_sees_their_tools_and_credentials_masked(
    app: Starlette, secrets: dict[str, str]
) -> None:
    alice = browser(app, secrets["alice"])

    home = alice.get("/")
    page = alice.get("/me")

    assert home.status_code == 303 and home.headers["location"] == "/me"
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "alice-wk" in text and "ready" in text and "/users/alice/groups/team/tools/weather/setup" in text
    assert "bob-wk" not in text
    assert ALICE_KEY[-4:] in text and leaks(page.text, ALICE_KEY) == []
    assert 'href="/credentials"' not in page.text  # the admin's pages are not offered


@pytest.mark.parametrize(
    "path",
    ["/credentials", "/credentials/bob-wk", "/credentials/alice-wk", "/groups", "/groups/team", "/users", "/audit"],
)
def test_the_admin_pages_refuse_a_user_who_is_not_an_admin(app: Starlette, secrets: dict[str, str], path: str) -> None:
    bob = browser(app, secrets["bob"])

    response = bob.get(path)

    assert response.status_code == 403
    assert leaks(response.text, ALICE_KEY) == [] and leaks(response.text, BOB_KEY) == []


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/credentials/alice-wk", {"field_api_key": NEW_KEY}),
        ("/credentials/alice-wk/delete", {"remove_bindings": "yes"}),
        ("/groups/team/bind", {"tool": "weather", "credential": "bob-wk"}),
        ("/groups/team/members", {"user": "carol", "action": "add"}),
        ("/users", {"name": "mallory", "admin": "yes"}),
    ],
)
def test_a_users_forged_admin_forms_change_nothing(
    app: Starlette, world: World, secrets: dict[str, str], path: str, data: dict[str, str]
) -> None:
    bob = browser(app, secrets["bob"])
    before = (world.store.read_credential("alice-wk")["api_key"], world.store.user("carol").groups)

    response = bob.post(path, data)

    assert response.status_code == 403
    assert (world.store.read_credential("alice-wk")["api_key"], world.store.user("carol").groups) == before
    assert not world.store.user_exists("mallory")


def test_a_personal_setup_page_opens_for_its_user_alone_not_for_another_user_nor_an_admin(
    app: Starlette, secrets: dict[str, str]
) -> None:
    path = "/users/alice/groups/team/tools/weather/setup"
    for who in ("bob", "admin"):
        other = browser(app, secrets[who])
        response = other.get(path)
        assert response.status_code == 403, who
        assert "alice's own" in html.unescape(response.text)
        assert 'name="mode"' not in response.text  # no form
        assert other.post(path, {"mode": "existing", "credential": "bob-wk"}).status_code == 403

    assert browser(app, secrets["alice"]).get(path).status_code == 200


def test_bob_sets_up_his_personal_tool_with_a_new_credential_of_his_own(
    app: Starlette, world: World, secrets: dict[str, str]
) -> None:
    bob = browser(app, secrets["bob"])
    path = "/users/bob/groups/team/tools/weather/setup"

    page = bob.get(path)
    done = bob.post(path, {"mode": "new", "name": "bob-new", "field_api_key": NEW_KEY, "action": "save"})

    assert page.status_code == 200 and "bob-wk" in page.text and "alice-wk" not in page.text
    assert done.status_code == 303
    assert world.store.credential_info("bob-new").owner == "bob"
    assert world.store.personal_bindings("team", "bob") == {("weather", "bob"): "bob-new"}
    assert world.store.personal_bindings("team", "alice") == {("weather", "alice"): "alice-wk"}


def test_bob_cannot_bind_alices_credential_nor_set_up_a_group_he_is_not_in(
    app: Starlette, world: World, secrets: dict[str, str]
) -> None:
    bob = browser(app, secrets["bob"])

    by_name = bob.post("/users/bob/groups/team/tools/weather/setup", {"mode": "existing", "credential": "alice-wk"})
    elsewhere = bob.get("/users/bob/groups/other/tools/weather/setup")

    assert by_name.status_code == 409 and "not bob's" in html.unescape(by_name.text)
    assert world.store.personal_bindings("team", "bob") == {}
    assert elsewhere.status_code == 404


def test_a_new_secret_or_the_users_removal_ends_their_sessions(
    app: Starlette, world: World, secrets: dict[str, str]
) -> None:
    bob = browser(app, secrets["bob"])
    assert bob.get("/me").status_code == 200

    people.renew_user_secret(world.store, "bob")
    assert bob.get("/me").status_code == 303  # to the sign-in page

    carol = browser(app, secrets["carol"])
    world.store.remove_user("carol")
    assert carol.get("/me").status_code == 303


def test_an_admin_user_signed_in_with_their_own_secret_reaches_the_admin_pages(app: Starlette, world: World) -> None:
    new_admin_secret(world.store)
    secret = people.create_user(world.store, "root", admin=True)

    root = browser(app, secret)

    assert root.get("/credentials").status_code == 200
    assert root.get("/users").status_code == 200


def test_the_admin_adds_a_user_whose_secret_is_shown_once_and_manages_members(
    app: Starlette, world: World, secrets: dict[str, str]
) -> None:
    boss = browser(app, secrets["admin"])

    added = boss.post("/users", {"name": "dave", "email": "dave@example.com"})
    listed = boss.get("/users")
    member = boss.post("/groups/team/members", {"user": "dave", "action": "add"})

    shown = re.search(r"cgu_[A-Za-z0-9_-]{40,}", added.text)
    assert added.status_code == 200 and shown is not None
    assert world.store.user_by_secret_hash(people.user_secret_hash(shown.group(0))) is not None
    assert "cgu_" not in listed.text
    assert member.status_code == 303 and world.store.is_member("team", "dave")
    assert "dave" in boss.get("/groups/team").text
    refused = boss.post("/users", {"name": "alice", "action": "remove"})
    assert refused.status_code == 409 and "owns 1 credential" in html.unescape(refused.text)


def test_the_admin_filters_the_audit_by_user_and_sees_personal_credentials_masked(
    app: Starlette, world: World, secrets: dict[str, str]
) -> None:
    from mcp_credgate.store import AuditRow

    stamp = "2030-01-01T00:00:00.000+00:00"
    world.store.write_audit(
        [
            AuditRow(stamp, "team", "a-bot", "weather", "alice-wk", "ok", 1.0, user="alice"),
            AuditRow(stamp, "team", "b-bot", "weather", None, "missing_credential", 1.0, user="bob"),
        ]
    )
    boss = browser(app, secrets["admin"])

    filtered = boss.get("/audit?user=alice").text
    listed = boss.get("/credentials").text

    assert "a-bot" in filtered and "b-bot" not in filtered
    assert "alice's own" in html.unescape(listed)
    assert leaks(listed, ALICE_KEY) == [] and leaks(listed, BOB_KEY) == []


def test_the_groups_setup_page_of_a_personal_tool_refuses_and_creates_nothing(
    app: Starlette, world: World, secrets: dict[str, str]
) -> None:
    boss = browser(app, secrets["admin"])

    page = boss.get("/groups/team/tools/weather/setup")
    posted = boss.post(
        "/groups/team/tools/weather/setup", {"mode": "new", "name": "shared-wk", "field_api_key": NEW_KEY}
    )

    assert page.status_code == 409 and "personal in group team" in page.text
    assert posted.status_code == 409
    assert "shared-wk" not in [c.name for c in world.store.list_credentials()]
