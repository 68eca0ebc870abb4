"""Remote clients signing in to a real `credgate serve --http` as the MCP authorization spec says: the SDK's
`OAuthClientProvider`, with the consent page driven in Debian's chromium by Playwright.

`BrowserUser` is the person at the browser: it signs in with their secret, chooses a group (or denies) and
hands the client the redirect it got, as the client's own loopback listener would. Playwright's sync API runs
in a worker thread (it cannot run on the event loop's thread).
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio.to_thread
import httpx2
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from mcp_credgate import people
from tests.support.gateway import World, python_tool
from tests.support.http_server import Server, start_server

CHROMIUM = os.environ.get("CREDGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
CALLBACK = "http://127.0.0.1:47913/callback"  # nothing listens: the browser's request is caught by Playwright


def browser_or_skip() -> Any:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"browser tests skipped: no chromium at {CHROMIUM} (`apt-get install chromium`; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page of a headless chromium (Debian's, driven by Playwright), closed at the end."""
    sync_playwright = browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


@contextmanager
def clock_site(root: Path) -> Iterator[tuple[World, Server, str]]:
    """`credgate serve --http` over a world whose group `research` allows `clock` (no credential) and has one
    member, ann: (the world, the server, ann's sign-in secret)."""
    world = World.create(root / "site", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    world.allow("research", "clock")
    ann = people.create_user(world.store, "ann")
    world.store.add_members("research", ["ann"])
    server = start_server(world, root / "server")
    try:
        yield world, server, ann
    finally:
        server.stop()
        world.close()


@dataclass
class MemoryStorage:
    """The SDK's `TokenStorage`, in memory."""

    tokens: OAuthToken | None = None
    client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class BrowserUser:
    """The person at the browser: `secret` (or their account at the OpenID provider) signs them in; `group` is
    what they allow (None: they deny)."""

    secret: str
    group: str | None = None
    callback: str = CALLBACK
    screenshots: Path | None = None
    answers: list[str] = field(default_factory=list)  # the redirects to the client, as they came
    pages: list[str] = field(default_factory=list)  # the consent pages' text
    page_hook: Callable[[Any], None] | None = None  # called on the consent page before answering
    sso_account: str | None = None  # sign in through the OpenID provider as this account (its subject)
    deliver: bool = False  # let the browser really go back to the client (its loopback listener) and wait there
    landings: list[str] = field(default_factory=list)  # with `deliver`: the text of the client's page, as shown
    on_pages: list[float] = field(default_factory=list)  # seconds from the authorization URL to the redirect

    def follow(self, authorization_url: str) -> str:
        """Open the authorization URL, sign in, answer the consent page; returns the redirect to the client."""
        sync_playwright = browser_or_skip()
        caught: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()

                def catch(route: Any) -> None:
                    caught.append(route.request.url)
                    route.fulfill(body="you may close this window")

                if not self.deliver:
                    page.route(f"{self.callback}**", catch)
                began = time.perf_counter()
                page.goto(authorization_url)
                if "/login" in page.url and self.sso_account is not None:  # through the OpenID provider
                    page.click("#sso")
                    page.click(f"button[value={self.sso_account}]")
                elif "/login" in page.url:
                    page.fill("#secret", self.secret)
                    page.click("button[type=submit]")
                page.wait_for_selector("text=Let a client act for you")
                self.pages.append(page.inner_text("main"))
                if self.screenshots is not None:
                    page.screenshot(path=str(self.screenshots / "consent.png"), full_page=True)
                if self.page_hook is not None:
                    self.page_hook(page)
                if self.group is None:
                    page.click("button[value=deny]")
                else:
                    page.check(f"input[name=group][value={self.group}]")
                    page.click("button[value=allow]")
                page.wait_for_url(f"{self.callback}**")
                self.on_pages.append(time.perf_counter() - began)
                if self.deliver:
                    page.wait_for_load_state()
                    caught.append(page.url)
                    self.landings.append(page.inner_text("body"))
            finally:
                browser.close()
        self.answers.append(caught[-1] if caught else "")
        return self.answers[-1]


def client_metadata(name: str = "Test Client", redirect: str = CALLBACK) -> OAuthClientMetadata:
    return OAuthClientMetadata(client_name=name, redirect_uris=[AnyUrl(redirect)])


def oauth_provider(
    server_mcp_url: str, user: BrowserUser, storage: MemoryStorage | None = None, **options: Any
) -> OAuthClientProvider:
    """The SDK's OAuth provider for a client of `server_mcp_url` whose person is `user`."""
    answer: list[str] = []

    async def redirect_handler(url: str) -> None:
        answer.append(await anyio.to_thread.run_sync(user.follow, url))

    async def callback_handler() -> AuthorizationCodeResult:
        query = {k: v[0] for k, v in parse_qs(urlsplit(answer.pop()).query).items()}
        if "error" in query:
            raise PermissionError(f"authorization refused: {query['error']}")
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    return OAuthClientProvider(
        server_mcp_url,
        options.pop("metadata", None) or client_metadata(),
        storage or MemoryStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        **options,
    )


def signed_in_http(provider: OAuthClientProvider, timeout: float = 60.0) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(auth=provider, timeout=timeout)


# -- the same flow by hand, without a browser: for the attacks -----------------------------------------


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


@dataclass
class HandFlow:
    """An OAuth client written out step by step against `base` (the server's URL), with a person who signs in
    with `secret` over plain HTTP (the login form, then the consent form with its CSRF token)."""

    base: str
    secret: str

    def http(self) -> httpx2.Client:
        return httpx2.Client(base_url=self.base, timeout=30.0)

    def register(self, redirect_uris: list[str] | None = None, name: str = "Hand Client") -> str:
        with self.http() as http:
            answer = http.post("/register", json={"client_name": name, "redirect_uris": redirect_uris or [CALLBACK]})
        assert answer.status_code == 201, answer.text
        client_id: str = answer.json()["client_id"]
        return client_id

    def authorize(
        self, client_id: str, challenge: str, *, redirect_uri: str = CALLBACK, **more: str
    ) -> httpx2.Response:
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "s-123",
            "resource": self.base + "/mcp",
            **more,
        }
        with self.http() as http:
            return http.get("/authorize", params=params)

    def consent(self, consent_url: str, group: str | None, secret: str | None = None) -> str:
        """Sign in, open the consent page, answer it: the redirect to the client (its Location)."""
        with self.http() as http:
            signed_in = http.post("/login", data={"secret": secret or self.secret})
            assert signed_in.status_code == 303, signed_in.text
            page = http.get(consent_url)
            assert page.status_code == 200, page.text
            form = {"csrf": _hidden(page.text, "csrf"), "request": _hidden(page.text, "request")}
            form |= {"decision": "allow", "group": group} if group is not None else {"decision": "deny"}
            answer = http.post("/oauth/consent", data=form)
        assert answer.status_code == 303, answer.text
        return answer.headers["location"]

    def code(self, client_id: str, challenge: str, group: str = "research", **more: str) -> str:
        """The whole front channel: the code the client's redirect URI receives."""
        started = self.authorize(client_id, challenge, **more)
        assert started.status_code == 302, started.text
        back = self.consent(started.headers["location"], group)
        return parse_qs(urlsplit(back).query)["code"][0]

    def token(self, **form: str) -> httpx2.Response:
        with self.http() as http:
            return http.post("/token", data=form)

    def exchange(self, client_id: str, code: str, verifier: str, redirect_uri: str = CALLBACK) -> httpx2.Response:
        return self.token(
            grant_type="authorization_code",
            client_id=client_id,
            code=code,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
            resource=self.base + "/mcp",
        )

    def refresh(self, client_id: str, refresh_token: str) -> httpx2.Response:
        return self.token(grant_type="refresh_token", client_id=client_id, refresh_token=refresh_token)

    def tokens(self, group: str = "research", name: str = "Hand Client") -> tuple[str, dict[str, Any]]:
        """Register, sign in, exchange: (client_id, the token answer)."""
        client_id = self.register(name=name)
        verifier, challenge = pkce_pair()
        answer = self.exchange(client_id, self.code(client_id, challenge, group), verifier)
        assert answer.status_code == 200, answer.text
        return client_id, answer.json()

    def mcp_status(self, access_token: str) -> httpx2.Response:
        """An MCP `initialize` over Streamable HTTP with `access_token`: 200 when the token is taken."""
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "hand", "version": "1"},
            },
        }
        with self.http() as http:
            return http.post(
                "/mcp",
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json, text/event-stream"},
                json=initialize,
            )


def _hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden {name} in the page"
    return html.unescape(found.group(1))
