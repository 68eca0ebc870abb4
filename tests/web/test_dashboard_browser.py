"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

An agent's call gets a missing-credential warning; an admin follows its `setup_url`, signs in, fills the
setup form; the agent's next call works. Screenshots of the main pages land in the test's folder.
`.ci/run` installs chromium when it is missing; these tests skip, saying why, only when it is not there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_credgate import admin, people
from mcp_credgate.agents import create_agent
from mcp_credgate.web.session import new_admin_secret
from tests.support.gateway import World, http_tool, make_canary, python_tool, result_text, running_upstream
from tests.support.http_server import Server, start_server
from tests.support.oauth_provider import oauth_tool, running_oauth_provider

CHROMIUM = os.environ.get("CREDGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",  # no network here: no background requests to fail
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = {
    "credentials": "/credentials",
    "groups": "/groups",
    "group": "/groups/research",
    "agents": "/agents",
    "audit": "/audit",
}


def _browser_or_skip() -> Any:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"browser tests skipped: no chromium at {CHROMIUM} (`apt-get install chromium`; .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - a dev dependency
        pytest.skip("browser tests skipped: playwright is not installed (pip install -e '.[dev]')")
    return sync_playwright


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[World, Server, str, str, Any]]:
    with running_upstream() as upstream:
        world = World.create(tmp_path / "site", {"lookup": http_tool("lookup", upstream.url("/lookup"))})
        world.allow("research", "lookup")
        admin_secret = new_admin_secret(world.store)
        agent_token = create_agent(world.store, "research", "browser-test-agent")
        server = start_server(world, tmp_path / "server")
        try:
            yield world, server, admin_secret, agent_token, upstream
        finally:
            server.stop()
            world.close()


@contextmanager
def signed_in(sync_playwright: Any, server: Server, admin_secret: str, path: str) -> Iterator[tuple[Any, Any]]:
    """A browser, and a page of it on `path` once the admin signed in on the way there; closed at the end."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"{server.base}{path}")
            page.fill("#secret", admin_secret)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server.base}{path}")
            yield browser, page
        finally:
            browser.close()


async def _call_tool(server: Server, token: str, tool: str) -> Any:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with http, Client(streamable_http_client(server.mcp_url, http_client=http)) as client:
        return await client.call_tool(tool, {})


def test_an_admin_follows_a_warnings_setup_url_and_the_agents_next_call_works(
    site: tuple[World, Server, str, str, Any], tmp_path: Path
) -> None:
    sync_playwright = _browser_or_skip()
    _world, server, admin_secret, agent_token, upstream = site
    secret = make_canary("browser")

    warning = anyio.run(_call_tool, server, agent_token, "lookup")
    assert warning.is_error and warning.structured_content is not None
    setup_url = warning.structured_content["setup_url"]
    assert setup_url == f"{server.base}/groups/research/tools/lookup/setup"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(setup_url)
            assert "/login" in page.url  # not signed in yet
            page.screenshot(path=str(tmp_path / "login.png"), full_page=True)
            page.fill("#secret", admin_secret)
            page.click("button[type=submit]")
            page.wait_for_url(setup_url)
            page.screenshot(path=str(tmp_path / "setup.png"), full_page=True)

            page.fill("#name", "lookup-key")
            page.fill("#field_token", secret)
            page.click("text=Create and bind")
            page.wait_for_url(f"{server.base}/groups/research?done=setup")
            assert page.locator(".status-ready").count() == 1

            sources = {}
            for name, path in PAGES.items():
                page.goto(server.base + path)
                page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
                sources[name] = page.content()
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(server.base + "/groups/research")
            phone.screenshot(path=str(tmp_path / "group-phone.png"), full_page=True)
            # nothing overflows sideways on a phone-width screen
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            cookies = json.dumps(page.context.cookies())
        finally:
            browser.close()

    result = anyio.run(_call_tool, server, agent_token, "lookup")
    assert not result.is_error, result_text(result)
    assert upstream.seen()[-1].header("Authorization") == f"Bearer {secret}"

    for text in (*sources.values(), cookies, server.output()):
        assert secret not in text
    assert "lookup-key" in sources["credentials"]
    for name in (*PAGES, "login", "setup", "group-phone"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_an_admin_sets_a_limit_in_the_browser_and_the_chart_leads_from_a_bar_to_its_calls(tmp_path: Path) -> None:
    """The budget form and the usage charts work without JavaScript: a limit set in the form refuses the call
    past it; the group page's chart shows the calls that ran and the limit; its bar opens those calls."""
    sync_playwright = _browser_or_skip()
    clock = python_tool("clock", "mcp_credgate.examples:utc_now").replace(
        'name = "clock"\n', 'name = "clock"\ncost = 0.25\n'
    )
    world = World.create(tmp_path / "site", {"clock": clock})
    world.allow("research", "clock")
    admin_secret = new_admin_secret(world.store)
    agent_token = create_agent(world.store, "research", "browser-test-agent")
    server = start_server(world, tmp_path / "server")
    try:
        with signed_in(sync_playwright, server, admin_secret, "/groups/research") as (browser, page):
            page.fill("#budget-amount", "3")
            page.select_option("#budget-per", "day")
            page.select_option("#budget-tool", "clock")
            page.click("#budgets button:has-text('Set')")
            page.wait_for_url(f"{server.base}/groups/research?done=saved")

            with ThreadPoolExecutor(1) as other:  # Playwright's loop runs in this thread
                results = [other.submit(anyio.run, _call_tool, server, agent_token, "clock").result() for _ in range(4)]
            assert [r.is_error for r in results] == [False, False, False, True]
            assert (results[3].structured_content or {})["warning"] == "budget_exceeded"
            _wait_for_usage(world, "research", 3)

            page.goto(f"{server.base}/groups/research")
            page.screenshot(path=str(tmp_path / "group-usage.png"), full_page=True)
            chart = page.locator("figure.chart", has_text="Tool clock: calls")
            assert "3 calls in 30 days" in chart.inner_text()
            assert chart.locator("line.limit title").text_content() == "limit 3 calls per day"
            chart.locator("svg a").click()
            page.wait_for_url(f"{server.base}/audit?*")
            outcomes = page.locator("tbody .status").all_inner_texts()
            assert outcomes == ["ok", "ok", "ok"]  # the calls that ran: not the one refused
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{server.base}/groups/research")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        server.stop()
        world.close()


def _wait_for_usage(world: World, group: str, calls: int) -> None:
    """Until the gateway's audit rows (written in batches) count `calls` calls that ran."""
    deadline = time.monotonic() + 10
    while sum(u.calls for u in world.store.usage(group, "2000-01-01", "tool")) < calls:
        assert time.monotonic() < deadline, "the calls' audit rows were not written"
        time.sleep(0.05)


def test_an_oauth2_tool_is_connected_from_its_setup_page_in_the_browser(tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    client_secret = make_canary("client-secret")
    with running_oauth_provider(client_secret=client_secret, token_prefix=make_canary("tok")) as provider:
        world = World.create(tmp_path / "site", {"whoami": oauth_tool(provider)})
        world.allow("research", "whoami")
        admin_secret = new_admin_secret(world.store)
        agent_token = create_agent(world.store, "research", "browser-test-agent")
        server = start_server(world, tmp_path / "server")
        try:
            warning = anyio.run(_call_tool, server, agent_token, "whoami")
            setup_url = warning.structured_content["setup_url"]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                try:
                    page = browser.new_page()
                    page.goto(setup_url)
                    page.fill("#secret", admin_secret)
                    page.click("button[type=submit]")
                    page.wait_for_url(setup_url)
                    page.fill("#name", "my-acme")
                    page.fill("#field_client_id", provider.client_id)
                    page.fill("#field_client_secret", client_secret)
                    page.click("text=Connect and bind")  # → the provider → back to /oauth/callback
                    page.wait_for_url(f"{server.base}/oauth/callback*")
                    page.screenshot(path=str(tmp_path / "connected.png"), full_page=True)
                    page.click("text=Continue")
                    page.wait_for_url(f"{server.base}/groups/research")
                    assert page.locator(".status-ready").count() == 1
                    sources = [page.content()]
                    page.goto(f"{server.base}/credentials/my-acme")
                    sources.append(page.content())
                finally:
                    browser.close()
            result = anyio.run(_call_tool, server, agent_token, "whoami")
            assert not result.is_error, result_text(result)
            assert provider.code_requests == 1 and provider.api_calls == 1
            for text in (*sources, server.output(), result_text(result)):
                for token in (client_secret, provider.current_access_token, provider.current_refresh_token):
                    assert token and token not in text
        finally:
            server.stop()
            world.close()


def test_an_admin_pages_through_and_searches_many_credentials_in_the_browser(tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    world = World.create(tmp_path / "site", {"lookup": http_tool("lookup", "https://lookup.example.com/v1")})
    spec = world.catalog.types["svc"]
    world.store.add_credentials(
        "svc", [(f"tok-{i:03d}", {"token": f"t-{i:03d}"}) for i in range(130)], spec.secret_fields
    )
    admin_secret = new_admin_secret(world.store)
    server = start_server(world, tmp_path / "server")
    try:
        with signed_in(sync_playwright, server, admin_secret, "/credentials") as (_browser, page):
            names = page.locator(".card h2 a")
            assert names.count() == 50 and names.first.inner_text() == "tok-000"
            page.click("a[rel=next]")
            page.wait_for_url("**/credentials?after=tok-049")
            assert names.first.inner_text() == "tok-050"
            page.screenshot(path=str(tmp_path / "credentials-page-2.png"), full_page=True)
            page.click("a[rel=prev]")
            page.wait_for_url("**/credentials?before=tok-050")
            assert names.first.inner_text() == "tok-000"
            page.fill("input[name=q]", "tok-12")
            page.click("text=Search")
            page.wait_for_url("**/credentials?q=tok-12*")
            assert [names.nth(i).inner_text() for i in range(names.count())] == [f"tok-12{i}" for i in range(10)]
            assert page.locator("a[rel=next]").count() == 0
    finally:
        server.stop()
        world.close()


def test_a_member_follows_their_personal_warnings_link_sets_up_their_own_key_and_their_agent_works(
    tmp_path: Path,
) -> None:
    sync_playwright = _browser_or_skip()
    secret = make_canary("member")
    with running_upstream() as upstream:
        world = World.create(tmp_path / "site", {"lookup": http_tool("lookup", upstream.url("/lookup"))})
        world.store.add_group("research")
        admin.allow(world.store, world.catalog, "research", ["lookup"], personal=True)
        alice_secret = people.create_user(world.store, "alice")
        world.store.add_members("research", ["alice"])
        token = create_agent(world.store, "research", "alice-laptop", user="alice")
        server = start_server(world, tmp_path / "server")
        try:
            warning = anyio.run(_call_tool, server, token, "lookup")
            assert warning.structured_content is not None
            assert warning.structured_content["scope"] == "personal"
            setup_url = warning.structured_content["setup_url"]
            assert setup_url == f"{server.base}/users/alice/groups/research/tools/lookup/setup"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                try:
                    page = browser.new_page(viewport={"width": 1100, "height": 900})
                    page.goto(setup_url)
                    assert "/login" in page.url
                    page.fill("#secret", alice_secret)
                    page.click("button[type=submit]")
                    page.wait_for_url(setup_url)
                    page.fill("#name", "alice-lookup")
                    page.fill("#field_token", secret)
                    page.click("text=Create and use it")
                    page.wait_for_url(f"{server.base}/me?done=setup")
                    page.screenshot(path=str(tmp_path / "me.png"), full_page=True)
                    assert page.locator(".status-ready").count() == 1
                    mine = page.content()
                finally:
                    browser.close()
            result = anyio.run(_call_tool, server, token, "lookup")
        finally:
            server.stop()
            world.close()
    assert not result.is_error, result_text(result)
    assert upstream.seen()[-1].header("Authorization") == f"Bearer {secret}"
    assert secret not in mine and secret not in server.output()
