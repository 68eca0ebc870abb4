"""The dashboard's lists at scale: credentials, groups, agents and the audit log come a page at a time (50 by
default, `?limit=` up to 200), follow `rel="next"`/`rel="prev"` links (`?after=`/`?before=` a key: a name, or an
audit row's id), and are searched by name prefix (`?q=`); choosing a credential among many (a group's binding, a
setup page) takes a typed name instead of a list of every one.

Real parts, as in test_dashboard.py: a store under `tmp_path`, the dashboard app through Starlette's TestClient.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from mcp_credgate.store import AuditRow
from mcp_credgate.web.app import build_dashboard_app
from mcp_credgate.web.session import COOKIE_NAME, new_admin_secret
from tests.support.gateway import World, http_tool, python_tool

T = TypeVar("T")
BASE = "http://127.0.0.1:8765"
KEY_TYPE = 'type = "weatherkey"\nfields = [ { name = "api_key", kind = "api_key" } ]'
ACCOUNT_TYPE = (
    'type = "account"\nfields = [ { name = "username", kind = "username" }, { name = "password", kind = "password" } ]'
)
KEYS = [f"wk-{i:03d}" for i in range(120)]
ACCOUNTS = [f"acct-{i}" for i in range(5)]
GROUPS = [f"g-{i:03d}" for i in range(120)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """120 weather keys, 5 accounts, 120 groups (each allowing weather and login, with one agent; g-000 has a
    revoked one too) and 250 audit rows."""
    w = World.create(
        tmp_path,
        {
            "weather": http_tool(
                "weather",
                "https://weather.example.com/v1",
                credential=KEY_TYPE,
                headers='{ X-Api-Key = "{cred.api_key}" }',
            ),
            "login": python_tool("login", "mcp_credgate.examples:account_login", credential=ACCOUNT_TYPE),
        },
    )
    store, types = w.store, w.catalog.types
    store.add_credentials(
        "weatherkey", [(n, {"api_key": f"key-{n}"}) for n in reversed(KEYS)], types["weatherkey"].secret_fields
    )
    store.add_credentials(
        "account", [(n, {"username": n, "password": f"pw-{n}"}) for n in ACCOUNTS], types["account"].secret_fields
    )
    for i, group in enumerate(GROUPS):
        store.add_group(group, f"the {group} team")
        store.allow(group, ["weather", "login"])
        store.add_agent(group, f"bot-{i:03d}", f"hash-{i}")
    store.add_agent("g-000", "old-bot", "hash-old")
    store.revoke_agent("old-bot")
    store.bind("g-000", "weather", "wk-007")
    store.write_audit(
        [
            AuditRow(
                f"2030-01-01T00:{i // 60:02d}:{i % 60:02d}.000+00:00", GROUPS[i % 3], None, "weather", None, "ok", 1.0
            )
            for i in range(250)
        ]
    )
    yield w
    w.close()


@pytest.fixture
def admin(world: World) -> Iterator[TestClient]:
    secret = new_admin_secret(world.store)
    app = build_dashboard_app(world.settings, world.catalog, host="127.0.0.1", port=8765)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        assert client.post("/login", data={"secret": secret}).status_code == 303
        assert client.cookies.get(COOKIE_NAME)
        yield client


def get(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return response.text


def link(page: str, rel: str) -> str | None:
    """The href of the page's `rel="next"` or `rel="prev"` link."""
    found = re.search(rf'<a rel="{rel}" href="([^"]*)"', page)
    return html.unescape(found.group(1)) if found else None


def query(href: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}


def credential_names(page: str) -> list[str]:
    return re.findall(r'<h2><a href="/credentials/[^"]+">([^<]+)</a>', page)


def group_names(page: str) -> list[str]:
    return re.findall(r'<h2><a href="/groups/[^"]+">([^<]+)</a></h2>', page)


def agent_rows(page: str) -> list[tuple[str, str]]:
    row = r'<tr><td>([^<]+)</td>\s*<td>static token</td>\s*<td><a href="/groups/[^"]+">([^<]+)</a></td>'
    return re.findall(row, page)


def audit_times(page: str) -> list[str]:
    return re.findall(r"<tr><td>(2030-[^<]+)</td>", page)


def walk(client: TestClient, start: str, read: Callable[[str], list[T]]) -> list[list[T]]:
    """Every page from `start`, following rel="next": what `read` finds on each."""
    pages: list[list[T]] = []
    href: str | None = start
    while href is not None:
        page = get(client, href)
        pages.append(read(page))
        href = link(page, "next")
    return pages


# -- credentials ------------------------------------------------------------------------------------


def test_credentials_come_fifty_to_a_page_by_name(admin: TestClient) -> None:
    pages = walk(admin, "/credentials", credential_names)
    everything = sorted(ACCOUNTS + KEYS)
    assert [len(p) for p in pages] == [50, 50, 25]
    assert [n for p in pages for n in p] == everything
    first = get(admin, "/credentials")
    assert link(first, "prev") is None
    assert query(link(first, "next") or "") == {"after": everything[49]}


def test_previous_leads_back_to_the_page_before(admin: TestClient) -> None:
    second = get(admin, link(get(admin, "/credentials"), "next") or "")
    back = link(second, "prev")
    assert back is not None and query(back) == {"before": sorted(ACCOUNTS + KEYS)[50]}
    assert credential_names(get(admin, back)) == sorted(ACCOUNTS + KEYS)[:50]


def test_a_name_prefix_finds_the_credentials_that_start_with_it(admin: TestClient) -> None:
    page = get(admin, "/credentials?q=wk-01")
    assert credential_names(page) == [f"wk-01{i}" for i in range(10)]
    assert re.search(r'<input[^>]*name="q"[^>]*value="wk-01"', page)
    assert link(page, "next") is None
    paged = walk(admin, "/credentials?q=wk-0&limit=40", credential_names)
    assert [len(p) for p in paged] == [40, 40, 20]
    assert query(link(get(admin, "/credentials?q=wk-0&limit=40"), "next") or "") == {
        "q": "wk-0",
        "limit": "40",
        "after": "wk-039",
    }
    assert credential_names(get(admin, "/credentials?q=nothing-like-it")) == []
    assert "No credential's name starts with" in get(admin, "/credentials?q=nothing-like-it")


def test_a_type_narrows_the_credentials_list(admin: TestClient) -> None:
    page = get(admin, "/credentials?type=account")
    assert credential_names(page) == ACCOUNTS
    assert re.search(r'<option value="account" selected>', page)
    assert credential_names(get(admin, "/credentials?type=account&q=acct-3")) == ["acct-3"]


@pytest.mark.parametrize(
    "limit, shown", [("10", 10), ("1", 1), ("0", 1), ("500", 125), ("bogus", 50), ("-3", 1), ("200", 125)]
)
def test_the_page_size_is_kept_within_1_to_200(admin: TestClient, limit: str, shown: int) -> None:
    assert len(credential_names(get(admin, f"/credentials?limit={limit}"))) == min(shown, 200)


def test_what_a_list_is_asked_is_shown_as_text_and_never_breaks_it(admin: TestClient) -> None:
    hostile = '"><script>alert(1)</script>'
    for path in ("/credentials", "/groups", "/agents", "/audit"):
        for param in ("q", "after", "before", "group", "type"):
            response = admin.get(path, params={param: hostile})
            assert response.status_code == 200, (path, param)
            assert "<script>alert(1)" not in response.text


# -- groups and agents --------------------------------------------------------------------------


def test_groups_come_fifty_to_a_page_with_their_tools_and_live_agents(admin: TestClient) -> None:
    pages = walk(admin, "/groups", group_names)
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [g for p in pages for g in p] == GROUPS
    first = get(admin, "/groups")
    card = re.search(r'<section class="card">\s*<h2><a href="/groups/g-000">.*?</section>', first, re.S)
    assert card and "2 tool(s) · 1 agent(s)" in card.group(0) and "the g-000 team" in card.group(0)


def test_groups_are_searched_by_name_prefix_and_the_new_group_form_stays(admin: TestClient) -> None:
    page = get(admin, "/groups?q=g-11")
    assert group_names(page) == [f"g-11{i}" for i in range(10)]
    assert 'action="/groups"' in page and 'name="description"' in page


def test_the_agents_page_lists_every_agent_with_its_group(admin: TestClient) -> None:
    pages = walk(admin, "/agents", agent_rows)
    rows = [r for p in pages for r in p]
    assert [len(p) for p in pages] == [50, 50, 21]
    assert rows == sorted([(f"bot-{i:03d}", g) for i, g in enumerate(GROUPS)] + [("old-bot", "g-000")])
    assert agent_rows(get(admin, "/agents?q=bot-05")) == [(f"bot-05{i}", f"g-05{i}") for i in range(10)]
    assert agent_rows(get(admin, "/agents?group=g-000")) == [("bot-000", "g-000"), ("old-bot", "g-000")]
    assert "revoked" in get(admin, "/agents?q=old-bot")
    assert 'href="/agents" aria-current="page"' in get(admin, "/agents")


# -- the audit log --------------------------------------------------------------------------------


def test_the_audit_log_pages_back_in_time_keeping_its_filters(admin: TestClient) -> None:
    first = get(admin, "/audit?group=g-001&limit=30")
    times = audit_times(first)
    assert len(times) == 30 and times == sorted(times, reverse=True)
    older = link(first, "next")
    assert older is not None and query(older)["group"] == "g-001" and query(older)["limit"] == "30"
    pages = walk(admin, "/audit?group=g-001&limit=30", audit_times)
    assert sum(len(p) for p in pages) == len(range(1, 250, 3))
    everything = [t for p in pages for t in p]
    assert everything == sorted(everything, reverse=True) and len(set(everything)) == len(everything)
    newer = link(get(admin, older), "prev")
    assert newer is not None and audit_times(get(admin, newer)) == times


def test_with_many_groups_the_audit_filter_takes_a_typed_group_name(admin: TestClient) -> None:
    page = get(admin, "/audit?group=g-002")
    assert re.search(r'<input[^>]*name="group"[^>]*value="g-002"', page)
    assert '<select name="group">' not in page
    assert len(audit_times(page)) == 83


# -- choosing one credential among many -------------------------------------------------------------


def test_a_group_page_with_many_credentials_of_a_type_takes_a_typed_name(admin: TestClient, world: World) -> None:
    page = get(admin, "/groups/g-000")
    forms = re.findall(r'<form method="post" action="/groups/g-000/bind".*?</form>', page, re.S)
    binding = {re.findall(r'name="tool" value="([^"]+)"', form)[0]: form for form in forms}
    weather = binding["weather"]
    assert re.search(r'<input[^>]*name="credential"[^>]*value="wk-007"', weather)
    assert "<option" not in weather
    assert 'href="/credentials?type=weatherkey"' in weather
    # few of a type: the choice is still a list (the login tool's 5 accounts)
    assert re.findall(r'<option value="([^"]+)"', binding["login"]) == ACCOUNTS

    csrf = re.search(r'name="csrf" value="([^"]*)"', page)
    assert csrf
    response = admin.post("/groups/g-000/bind", data={"csrf": csrf.group(1), "tool": "weather", "credential": "wk-100"})
    assert response.status_code == 303
    assert world.store.group("g-000").tools["weather"] == "wk-100"


def test_a_setup_page_with_many_credentials_of_the_type_takes_a_typed_name(admin: TestClient) -> None:
    page = get(admin, "/groups/g-001/tools/weather/setup")
    assert re.search(r'<input[^>]*id="credential"[^>]*name="credential"', page)
    assert '<select id="credential"' not in page
    accounts = get(admin, "/groups/g-001/tools/login/setup")
    found = re.search(r'<select id="credential" name="credential">(.*?)</select>', accounts, re.S)
    assert found and re.findall(r'<option value="([^"]+)"', found.group(1)) == ACCOUNTS
