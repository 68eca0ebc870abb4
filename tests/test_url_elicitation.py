"""Fixing a missing credential inside the conversation (contract §7, issue 24), with the Python SDK's client and
a person at a real browser (chromium driven by Playwright):

- over stdio, the gateway serves the setup page itself on an ephemeral loopback port: a client that declares
  URL elicitation gets the link as error -32042 (handshake protocol) and hears
  `notifications/elicitation/complete` once the page has saved, or an input-required round (2026-07-28) whose
  retry runs the tool; the link is single use; a declined round gets the §4 warning;
- over HTTP the link opens only for the right person signed in (an admin for a group's credential);
- a client without URL elicitation gets today's result.
The secret typed into the page never reaches the agent, the logs or the store's files in the clear.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcp_credgate import people
from mcp_credgate.agents import create_agent
from mcp_credgate.web.session import new_admin_secret
from tests.support.gateway import (
    TOKEN_FIELDS,
    Transcript,
    World,
    assert_no_leak,
    assert_no_leak_at_rest,
    python_tool,
    store_env,
    teed_serve,
)
from tests.support.http_server import Server, start_server
from tests.support.oauth_provider import OAuthProvider, oauth_tool, running_oauth_provider
from tests.support.oauth_world import add_acme, oauth_world
from tests.support.sign_in import chromium_page

pytestmark = pytest.mark.anyio

HANDLERS = """
def token_length(args, credential):
    return {"token_length": len(credential["token"])}
"""
TOKEN = "tok-" + secrets.token_hex(16)
LINK = re.compile(r"http://127\.0\.0\.1:\d+/setup/[\w-]{43}")


@pytest.fixture
def world(tmp_path: Path) -> Any:
    tools = {
        "weather": python_tool("weather", "setup_handlers:token_length", credential='type = "svc"\n' + TOKEN_FIELDS)
    }
    w = World.create(tmp_path / "site", tools, files={"setup_handlers.py": HANDLERS})
    w.allow("desk", "weather")
    yield w
    w.close()


def set_up_at_browser(url: str, name: str, token: str, secret: str | None = None) -> str:
    """A person opens the setup link, signs in if asked (with `secret`), creates a credential there; returns
    the page's text once saved."""
    with chromium_page() as page:
        page.goto(url)
        if "/login" in page.url and secret is not None:
            page.fill("#secret", secret)
            page.click("button[type=submit]")
        page.wait_for_selector("text=Create a new credential")
        page.fill("#name", name)
        page.fill("#field_token", token)
        page.click("button[value=save]")
        page.wait_for_selector("text=The credential is saved")
        return str(page.inner_text("main"))


def connect_at_browser(url: str, provider: OAuthProvider, client_secret: str, expired: str | None = None) -> str:
    """A person opens the setup link of an OAuth2 tool and connects a new credential there (or, `expired`, the
    bound one again) at the provider; returns the link's page once it is done."""
    with chromium_page() as page:
        page.goto(url)
        if expired is not None:
            page.click(f"text=Connect {expired} again")
        else:
            page.fill("#name", "my-acme")
            page.fill("#field_client_id", provider.client_id)
            page.fill("#field_client_secret", client_secret)
            page.click("text=Connect and bind")  # → the provider → back to the link server's /oauth/callback
        page.wait_for_selector("text=The provider granted access")
        page.click("text=Continue")
        page.wait_for_selector("text=The credential is saved")
        return str(page.inner_text("main"))


class Agent:
    """What the client heard besides results: the elicitation rounds it was asked, the completions. `browse`:
    what the person does at the link (by default: create the `svc` credential)."""

    def __init__(self, answer: str = "accept", browse: Callable[[str], str] | None = None) -> None:
        self.answer = answer
        self.browse = browse or (lambda url: set_up_at_browser(url, "svc-main", TOKEN))
        self.asked: list[types.ElicitRequestURLParams] = []
        self.completed: list[str] = []
        self.heard = anyio.Event()
        self.pages: list[str] = []

    async def on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        assert isinstance(params, types.ElicitRequestURLParams), params
        self.asked.append(params)
        if self.answer == "accept":
            self.pages.append(await anyio.to_thread.run_sync(self.browse, params.url))
        return types.ElicitResult(action=self.answer)  # type: ignore[arg-type]

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ElicitCompleteNotification):
            self.completed.append(message.params.elicitation_id)
            self.heard.set()


@asynccontextmanager
async def over_stdio(world: World, tmp_path: Path, agent: Agent | None, mode: str) -> AsyncIterator[Client]:
    params = teed_serve(world, tmp_path / "stdout.bin", store_env(world.settings), "--group", "desk")
    callbacks: dict[str, Any] = {}
    if agent is not None:
        callbacks = {"elicitation_callback": agent.on_elicitation, "message_handler": agent.on_message}
    with (tmp_path / "stderr.txt").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, **callbacks) as client:
            yield client


def _leak_checks(world: World, tmp_path: Path, transcript: Transcript) -> None:
    for text in (transcript.text(), (tmp_path / "stdout.bin").read_text(), (tmp_path / "stderr.txt").read_text()):
        assert_no_leak(text, TOKEN)
    assert_no_leak_at_rest(world.settings, TOKEN)


async def test_over_stdio_a_handshake_client_is_sent_the_link_hears_it_was_used_and_its_retry_runs(
    world: World, tmp_path: Path
) -> None:
    agent, transcript = Agent(), Transcript()
    with anyio.fail_after(90):
        async with over_stdio(world, tmp_path, agent, "legacy") as client:
            refused = await transcript.call_refused(client, "weather", {})
            assert refused.error.code == types.URL_ELICITATION_REQUIRED
            [asked] = (refused.error.data or {})["elicitations"]
            assert asked["mode"] == "url" and LINK.fullmatch(asked["url"]) and asked["elicitationId"]
            assert "Tool weather needs a credential of type svc" in asked["message"]

            page = await anyio.to_thread.run_sync(set_up_at_browser, asked["url"], "svc-main", TOKEN)
            with anyio.fail_after(10):
                await agent.heard.wait()
            assert agent.completed == [asked["elicitationId"]]
            result = await transcript.call(client, "weather", {})

            async with httpx2.AsyncClient() as http:  # single use: the page now says it is done, and saves nothing
                again = await http.get(asked["url"])
                posted = await http.post(asked["url"], data={"mode": "new", "name": "svc-2", "field_token": "x"})
    assert "Go back to your agent" in page
    assert not result.is_error and result.structured_content == {"token_length": len(TOKEN)}
    assert again.status_code == 200 and "This link is used up" in again.text
    assert posted.status_code == 200 and "This link is used up" in posted.text
    assert [c.name for c in world.store.credentials_page(limit=10).items] == ["svc-main"]
    _leak_checks(world, tmp_path, transcript)


async def test_over_stdio_a_2026_client_fixes_it_in_one_input_round_and_its_retry_runs(
    world: World, tmp_path: Path
) -> None:
    agent, transcript = Agent(), Transcript()
    with anyio.fail_after(90):
        async with over_stdio(world, tmp_path, agent, "2026-07-28") as client:
            result = await transcript.call(client, "weather", {})  # the SDK drives the round and retries
    [asked] = agent.asked
    assert LINK.fullmatch(asked.url) and "Tool weather needs a credential" in asked.message
    assert not result.is_error and result.structured_content == {"token_length": len(TOKEN)}
    _leak_checks(world, tmp_path, transcript)


async def test_over_stdio_a_declined_round_gets_the_warning_and_runs_nothing(world: World, tmp_path: Path) -> None:
    agent, transcript = Agent(answer="decline"), Transcript()
    with anyio.fail_after(60):
        async with over_stdio(world, tmp_path, agent, "2026-07-28") as client:
            result = await transcript.call(client, "weather", {})
    assert len(agent.asked) == 1  # asked once, not again on the retry
    assert result.is_error and (result.structured_content or {})["warning"] == "missing_credential"
    assert LINK.fullmatch((result.structured_content or {})["setup_url"])


async def test_over_stdio_a_client_without_url_elicitation_gets_the_warning_with_a_link_that_opens(
    world: World, tmp_path: Path
) -> None:
    transcript = Transcript()
    world.add_credential("svc-other", "svc", {"token": "tok-of-another-group-1234"})  # another group's, say
    with anyio.fail_after(60):
        async with over_stdio(world, tmp_path, None, "legacy") as client:
            result = await transcript.call(client, "weather", {})
            link = (result.structured_content or {})["setup_url"]
            async with httpx2.AsyncClient() as http:
                page = await http.get(link)
                unknown = await http.get(link[:-4] + "abcd")
                foreign = await http.post(link, headers={"Origin": "http://evil.example"}, data={"mode": "new"})
                # whoever holds the link (the agent too) creates a credential there, but binds no stored one
                picked = await http.post(link, data={"mode": "existing", "credential": "svc-other"})
    assert result.is_error and (result.structured_content or {})["warning"] == "missing_credential"
    assert LINK.fullmatch(link) and page.status_code == 200 and "Create a new credential" in page.text
    assert "svc-other" not in page.text and "Use an existing credential" not in page.text
    assert unknown.status_code == 404 and "unknown or has expired" in unknown.text
    assert foreign.status_code == 403
    assert picked.status_code == 400 and world.store.binding("desk", "weather").credential is None


async def test_over_stdio_an_oauth2_tool_is_connected_from_the_links_page_and_the_retry_runs(tmp_path: Path) -> None:
    client_secret = "cs-" + secrets.token_hex(12)
    with running_oauth_provider(client_secret=client_secret, token_prefix="acme-" + secrets.token_hex(4)) as provider:
        world = World.create(tmp_path / "site", {"whoami": oauth_tool(provider)})
        world.allow("desk", "whoami")
        agent = Agent(browse=lambda url: connect_at_browser(url, provider, client_secret))
        transcript = Transcript()
        try:
            with anyio.fail_after(90):
                async with over_stdio(world, tmp_path, agent, "legacy") as client:
                    refused = await transcript.call_refused(client, "whoami", {})
                    [asked] = (refused.error.data or {})["elicitations"]
                    await agent.on_elicitation(None, types.ElicitRequestURLParams(**asked))  # type: ignore[arg-type]
                    with anyio.fail_after(10):
                        await agent.heard.wait()
                    result = await transcript.call(client, "whoami", {})
            tokens = (client_secret, provider.current_access_token, provider.current_refresh_token)
        finally:
            world.close()
    assert agent.completed == [asked["elicitationId"]]
    assert "Go back to your agent" in agent.pages[0]
    assert not result.is_error and provider.code_requests == 1 and provider.api_calls == 1
    for text in (transcript.text(), (tmp_path / "stdout.bin").read_text(), (tmp_path / "stderr.txt").read_text()):
        for token in tokens:
            assert token and token not in text


async def test_over_stdio_an_expired_oauth2_credential_is_connected_again_in_one_input_round(tmp_path: Path) -> None:
    with running_oauth_provider() as provider, oauth_world(tmp_path / "site", provider) as world:
        add_acme(world, provider, expires_in=-60, refresh=False)
        agent = Agent(browse=lambda url: connect_at_browser(url, provider, "", expired="acme-main"))
        with anyio.fail_after(90):
            async with over_stdio(world, tmp_path, agent, "2026-07-28") as client:
                result = await client.call_tool("whoami", {})
    [asked] = agent.asked
    assert "has expired or was revoked" in asked.message
    assert not result.is_error, result
    assert provider.code_requests == 1 and provider.api_calls == 1


@pytest.fixture
def http_site(world: World, tmp_path: Path) -> Any:
    server = start_server(world, tmp_path / "http")
    yield server
    server.stop()


async def test_over_http_the_link_opens_for_an_admin_signed_in_and_for_no_member(
    world: World, http_site: Server
) -> None:
    token = create_agent(world.store, "desk", "remote")
    bob = people.create_user(world.store, "bob")
    world.store.add_members("desk", ["bob"])
    admin_secret = new_admin_secret(world.store)
    agent = Agent(answer="cancel")
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(
            streamable_http_client(http_site.mcp_url, http_client=http),
            mode="legacy",
            elicitation_callback=agent.on_elicitation,
            message_handler=agent.on_message,
        ) as client,
    ):
        with pytest.raises(MCPError) as refused:
            await client.call_tool("weather", {})
        [asked] = (refused.value.error.data or {})["elicitations"]
        link = asked["url"]
        assert link.startswith(http_site.base + "/setup/")

        async with httpx2.AsyncClient() as browser:
            anonymous = await browser.get(link)
        as_bob = await anyio.to_thread.run_sync(_page_as, link, bob)
        page = await anyio.to_thread.run_sync(set_up_at_browser, link, "svc-main", TOKEN, admin_secret)
        with anyio.fail_after(10):  # the page saved in the process the client is connected to
            await agent.heard.wait()
        result = await client.call_tool("weather", {})
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=%2Fsetup%2F")
    assert "for an administrator" in as_bob
    assert "Go back to your agent" in page and agent.completed == [asked["elicitationId"]]
    assert not result.is_error and result.structured_content == {"token_length": len(TOKEN)}
    assert_no_leak(http_site.output(), TOKEN)


def _page_as(url: str, secret: str) -> str:
    with chromium_page() as page:
        page.goto(url)
        page.fill("#secret", secret)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        return str(page.inner_text("main"))


async def test_over_http_a_client_without_url_elicitation_gets_the_dashboards_setup_page(
    world: World, http_site: Server
) -> None:
    token = create_agent(world.store, "desk", "remote")
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(http_site.mcp_url, http_client=http), mode="legacy") as client,
    ):
        result = await client.call_tool("weather", {})
    assert result.is_error
    assert (result.structured_content or {})["setup_url"] == f"{http_site.base}/groups/desk/tools/weather/setup"
