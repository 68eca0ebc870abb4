"""Sign-in through the organisation's OpenID provider in a real browser (Debian's chromium under Playwright):
a real `credgate serve --http` given the CREDGATE_OIDC_* variables, a real provider (`oidc-provider` under Node),
the whole way from a page that needs a session to the user's own page; and the admin secret beside it.
"""

from __future__ import annotations

from pathlib import Path

from mcp_credgate import people
from mcp_credgate.web.session import new_admin_secret
from tests.support.gateway import World, make_canary, python_tool
from tests.support.http_server import free_port, start_server
from tests.support.oidc_provider import Account, running_oidc_provider
from tests.web.test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS, _browser_or_skip

CLIENT_ID = "credgate-dashboard"
CLIENT_SECRET = make_canary("OIDC")
ALICE = Account("alice-sub", "alice@example.com", True, "alice", "Alice Example")


def test_a_user_signs_in_through_the_provider_and_reaches_their_own_page(tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    world = World.create(tmp_path / "site", {"clock": python_tool("clock", "mcp_credgate.examples:utc_now")})
    people.create_user(world.store, "alice", email="alice@example.com")
    admin_secret = new_admin_secret(world.store)
    with running_oidc_provider(
        tmp_path / "oidc",
        [ALICE],
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[f"{base}/login/sso/callback"],
    ) as provider:
        env = {
            "CREDGATE_OIDC_ISSUER": provider.issuer,
            "CREDGATE_OIDC_CLIENT_ID": CLIENT_ID,
            "CREDGATE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        }
        server = start_server(world, tmp_path / "server", port=port, env=env)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                try:
                    page = browser.new_page()
                    page.goto(f"{base}/me")
                    assert "/login" in page.url
                    page.screenshot(path=str(tmp_path / "login-sso.png"), full_page=True)
                    page.click("#sso")
                    page.wait_for_url(f"{provider.issuer}/interaction/**")
                    page.click(f"button[value={ALICE.sub}]")
                    page.wait_for_url(f"{base}/me")  # through the callback's page, which moves on by itself
                    assert page.locator(".who").inner_text() == "alice"
                    page.screenshot(path=str(tmp_path / "me-sso.png"), full_page=True)
                    sso_cookies = page.context.cookies()

                    admin = browser.new_page()  # another context: the break-glass admin secret still works
                    admin.goto(f"{base}/login?next=/credentials")
                    admin.fill("#secret", admin_secret)
                    admin.click("button[type=submit]")
                    admin.wait_for_url(f"{base}/credentials")
                    assert admin.locator(".who").inner_text() == "admin"
                finally:
                    browser.close()
        finally:
            server.stop()
            world.close()

    session = [c for c in sso_cookies if c["name"] == "credgate_session"]
    assert len(session) == 1 and session[0]["value"].startswith("o1.alice.") and session[0]["httpOnly"]
    assert session[0]["sameSite"] == "Strict"
    assert CLIENT_SECRET not in server.output()
    assert (tmp_path / "login-sso.png").stat().st_size > 1000
