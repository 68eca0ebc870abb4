"""Setup links on both backends (contract §7): a link opens its call's page until it is used or expires, is
spent once (two racing saves: one wins), is kept as a hash only, dies with its group or its user, and its
client hears that it was used."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx2
import pytest
from starlette.testclient import TestClient

from mcp_credgate import admin
from mcp_credgate.config import Settings
from mcp_credgate.declarations import Catalog
from mcp_credgate.errors import NotFoundError
from mcp_credgate.setup_links import LINK_SECONDS, Completions, SetupLinks
from mcp_credgate.store import Store
from mcp_credgate.store.setup_links import MAX_LINKS_PER_SETUP
from mcp_credgate.web.app import build_link_app
from mcp_credgate.web.site import Site
from tests.support.gateway import closed_port
from tests.support.oauth_provider import running_oauth_provider
from tests.support.oauth_world import GROUP, add_acme, oauth_world
from tests.support.raw_db import holding_the_write_lock


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _token(url: str) -> str:
    return url.rsplit("/setup/", 1)[1]


def test_a_link_opens_its_calls_page_until_it_is_used_once(store: Store) -> None:
    store.add_group("research")
    links = SetupLinks(store)
    issued = links.issue("http://127.0.0.1:9/", "research", "weather", None)
    assert issued.url.startswith("http://127.0.0.1:9/setup/")
    token = _token(issued.url)

    found = links.find(token)
    assert found is not None and (found.group, found.tool, found.user, found.used) == (
        "research",
        "weather",
        None,
        False,
    )
    assert found.elicitation_id == issued.elicitation_id
    assert links.use(token) is True
    assert links.use(token) is False  # single use
    used = links.find(token)
    assert used is not None and used.used
    assert links.find(token + "x") is None and links.find("") is None


def test_a_link_is_stored_as_its_hash_alone(store: Store) -> None:
    store.add_group("research")
    token = _token(SetupLinks(store).issue("http://127.0.0.1:9", "research", "weather", None).url)
    rows = store._query("SELECT * FROM setup_links")
    assert token not in repr([dict(r) for r in rows])
    assert store.setup_link(hashlib.sha256(token.encode()).hexdigest()) is not None


def test_an_expired_link_opens_nothing_and_cannot_be_spent(store: Store) -> None:
    store.add_group("research")
    clock = Clock()
    links = SetupLinks(store, clock=clock)
    token = _token(links.issue("http://127.0.0.1:9", "research", "weather", None).url)
    clock.now += LINK_SECONDS + 1
    assert links.find(token) is None
    assert links.use(token) is False


def test_a_personal_link_names_its_user_and_dies_with_the_user_or_the_group(store: Store) -> None:
    store.add_group("research")
    store.add_user("ann", "ann-secret-hash")
    store.add_members("research", ["ann"])
    links = SetupLinks(store)
    mine = _token(links.issue("http://127.0.0.1:9", "research", "mail", "ann").url)
    shared = _token(links.issue("http://127.0.0.1:9", "research", "weather", None).url)
    found = links.find(mine)
    assert found is not None and found.user == "ann"

    store.remove_user("ann", force=True)
    assert links.find(mine) is None
    store.remove_group("research")
    assert links.find(shared) is None


def test_two_saves_racing_for_one_link_spend_it_once(store: Store, settings: Settings) -> None:
    store.add_group("research")
    token = _token(SetupLinks(store).issue("http://127.0.0.1:9", "research", "weather", None).url)
    other = Store.open(settings)
    try:
        wins: list[bool] = []
        barrier = threading.Barrier(2)

        def spend(on: Store) -> None:
            barrier.wait()
            wins.append(SetupLinks(on).use(token))

        threads = [threading.Thread(target=spend, args=(s,)) for s in (store, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(wins) == [False, True]
    finally:
        other.close()


@pytest.mark.anyio
async def test_the_client_that_was_given_a_link_hears_once_that_it_was_used(store: Store) -> None:
    store.add_group("research")
    links = SetupLinks(store)
    issued = links.issue("http://127.0.0.1:9", "research", "weather", None)
    heard: list[str] = []

    async def notify() -> None:
        heard.append(issued.elicitation_id)

    links.completions.wait(issued.elicitation_id, notify)
    token = _token(issued.url)
    assert await anyio.to_thread.run_sync(links.use, token)  # the pages save in a worker thread
    assert not await anyio.to_thread.run_sync(links.use, token)
    assert heard == [issued.elicitation_id]


def test_an_agent_calling_in_a_loop_keeps_only_the_newest_links_of_one_setup(store: Store) -> None:
    store.add_group("research")
    clock = Clock()
    links = SetupLinks(store, clock=clock)
    issued = []
    for _ in range(MAX_LINKS_PER_SETUP + 5):
        clock.now += 1
        issued.append(_token(links.issue("http://127.0.0.1:9", "research", "weather", None).url))
    other = _token(links.issue("http://127.0.0.1:9", "research", "mail", None).url)
    assert [links.find(t) is not None for t in issued] == [False] * 5 + [True] * MAX_LINKS_PER_SETUP
    assert links.find(other) is not None


def test_an_oauth_connection_started_at_a_link_binds_nothing_once_the_link_is_spent(tmp_path: Path) -> None:
    """The agent holds the link too: it starts a connection of its own (to its own account at the provider)
    while the person connects theirs. Once the person's has spent the link, the agent's ends in a refusal:
    its credential neither stored nor bound in place of the person's."""
    secret = "cs-" + secrets.token_hex(8)
    with running_oauth_provider(client_secret=secret) as provider, oauth_world(tmp_path / "site", provider) as world:
        port = closed_port()
        base = f"http://127.0.0.1:{port}"
        with Site.open(replace(world.settings, public_url=base), lambda: world.catalog) as site:
            token = _token(site.setup_links.issue(base, GROUP, "whoami", None).url)
            with TestClient(build_link_app(site, port), base_url=base) as browser:

                def connect(name: str) -> str:
                    form = {"mode": "new", "name": name, "action": "connect"}
                    form |= {"field_client_id": provider.client_id, "field_client_secret": secret}
                    started = browser.post(f"/setup/{token}", data=form, follow_redirects=False)
                    assert started.status_code == 303, started.text
                    with httpx2.Client(trust_env=False, follow_redirects=False) as at_provider:
                        back = urlsplit(at_provider.get(started.headers["location"]).headers["location"])
                    return f"{back.path}?{back.query}"

                agents = connect("agents-acme")  # started first, finished last
                persons = connect("persons-acme")
                assert browser.get(persons).status_code == 200
                late = browser.get(agents)
            assert late.status_code == 409, late.text
            assert world.store.group(GROUP).tools["whoami"] == "persons-acme"
            with pytest.raises(NotFoundError):
                world.store.credential_info("agents-acme")


def test_an_agent_calling_in_a_loop_keeps_a_bounded_number_of_clients_waiting() -> None:
    """Each link's client waits (in memory, holding its session) to hear it was used; the store keeps only the
    newest links of one setup, and so many waiting notices are kept at most, the oldest dropped first."""
    clock = Clock()
    completions = Completions(clock, most=100)
    heard: list[str] = []

    def notify(eid: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def told() -> None:
            heard.append(eid)

        return told

    for i in range(1000):
        clock.now += 0.01
        completions.wait(str(i), notify(str(i)))
    assert len(completions) == 100
    clock.now += LINK_SECONDS + 1
    completions.wait("last", notify("last"))
    assert len(completions) == 1


def test_a_link_connects_again_no_expired_credential_another_group_uses_too(tmp_path: Path) -> None:
    """The link alone (over stdio) may connect again the expired credential bound for its call, when that is
    its group's alone; bound in another group too, connecting it (the agent holds the link, and its own account
    at the provider) would hand the other group's calls to the agent's account: the page offers a new one."""
    with running_oauth_provider() as provider, oauth_world(tmp_path / "site", provider) as world:
        add_acme(world, provider, expires_in=-60, refresh=False)
        world.allow("ops", "whoami")
        world.bind("ops", "whoami", "acme-main")
        port = closed_port()
        base = f"http://127.0.0.1:{port}"
        with Site.open(replace(world.settings, public_url=base), lambda: world.catalog) as site:
            shared = _token(site.setup_links.issue(base, GROUP, "whoami", None).url)
            with TestClient(build_link_app(site, port), base_url=base) as browser:
                page = browser.get(f"/setup/{shared}")
                tried = browser.post(f"/setup/{shared}", data={"mode": "reconnect"}, follow_redirects=False)
                world.store.unbind("ops", "whoami")  # the desk group's alone now
                alone = browser.get(f"/setup/{shared}")
        assert page.status_code == 200 and "Connect acme-main again" not in page.text
        assert not tried.headers.get("location", "").startswith(provider.authorize_url)
        assert "Connect acme-main again" in alone.text


def test_a_link_page_the_store_cannot_take_just_now_is_a_503_and_the_log_never_holds_the_link(
    settings: Settings, catalog: Catalog, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The link alone opens its page (over stdio): written in a log line, it would open the page to whoever
    reads the log, for as long as it lives."""
    store.add_group("research")
    admin.allow(store, catalog, "research", ["weather"])
    port = closed_port()
    base = f"http://127.0.0.1:{port}"
    with Site.open(replace(settings, public_url=base), lambda: catalog) as site:
        token = _token(site.setup_links.issue(base, "research", "weather", None).url)
        form = {"mode": "new", "name": "wk-link", "field_api_key": "wk_" + "a" * 12}
        with TestClient(build_link_app(site, port), base_url=base, follow_redirects=False) as browser:
            with caplog.at_level(logging.ERROR, logger="credgate"), holding_the_write_lock(settings):
                refused = browser.post(f"/setup/{token}", data=form)
            assert refused.status_code == 503 and "retry later (ref: " in refused.text, refused.text
            assert "not served: the store cannot be used" in caplog.text
            assert token not in caplog.text and token not in refused.text
            assert browser.post(f"/setup/{token}", data=form).status_code == 303  # the link is not spent
    assert store.group("research").tools["weather"] == "wk-link"
