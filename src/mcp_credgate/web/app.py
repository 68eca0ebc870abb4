"""The dashboard's routes, and `credgate dashboard`'s app: the pages alone, behind the HTTP guard.

Server-rendered HTML (Jinja2, autoescaped), plain forms, no JavaScript. Every page needs a session cookie: an
admin's, but for a user's own pages (`/me`, a personal setup page); every form post also its CSRF token.
Secret values are shown masked and never put into a form: an empty secret input keeps the stored value. The
rules (validation, binding types, statuses, people) are `admin`'s, `people`'s and the declarations', as for
the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import Settings
from ..declarations import Catalog
from ..guard import RequestGuard, StoreFaultAnswer, allowed_hosts_and_origins
from ..probes import probe_routes, store_checks
from .pages import agents, audit, consent, credentials, groups, me, setup, setup_link, signin, sso, users
from .site import HERE, Site


def routes(site: Site) -> list[Route | Mount]:
    def page(handler: signin.Page) -> signin.Endpoint:
        return signin.guarded(site, handler)

    def own(handler: signin.Page) -> signin.Endpoint:
        """A page of the signed-in user's own: for every user (the page checks whose it is)."""
        return signin.guarded(site, handler, admin_only=False)

    def group_change(action: str, change: groups.GroupChange) -> Route:
        return Route(f"/groups/{{group}}/{action}", page(groups.changing(change)), methods=["POST"])

    return [
        Route("/", page(signin.home)),
        Route("/login", partial(signin.login, site), methods=["GET", "POST"]),
        # the organisation's OpenID provider (no session there: the sealed flow cookie and the state prove it)
        Route("/login/sso", partial(sso.start, site)),
        Route("/login/sso/callback", partial(sso.callback, site)),
        Route("/logout", page(signin.logout), methods=["POST"]),
        Route("/credentials", page(credentials.credentials)),
        Route("/credentials/new", page(credentials.credential_new), methods=["GET", "POST"]),
        Route("/credentials/{name}", page(credentials.credential_edit), methods=["GET", "POST"]),
        Route("/credentials/{name}/delete", page(credentials.credential_delete), methods=["POST"]),
        Route("/credentials/{name}/connect", page(credentials.credential_connect), methods=["POST"]),
        # no session there: the state proves it (see `oauth_callback`)
        Route("/oauth/callback", partial(credentials.oauth_callback, site)),
        Route("/groups", page(groups.groups), methods=["GET", "POST"]),
        Route("/groups/{group}", page(groups.group), methods=["GET"]),
        group_change("allow", groups.allow),
        group_change("deny", groups.deny),
        group_change("bind", groups.bind),
        group_change("agents", groups.add_agent),
        group_change("revoke", groups.revoke),
        group_change("members", groups.members),
        group_change("budget", groups.budget),
        group_change("budget-rm", groups.budget_rm),
        group_change("delete", groups.delete),
        group_change("{action:str}", groups.no_such_change),  # any other word, after those: 404
        Route("/groups/{group}/tools/{tool}/setup", page(setup.setup), methods=["GET", "POST"]),
        Route("/agents", page(agents.agents)),
        Route("/users", page(users.users), methods=["GET", "POST"]),
        Route("/me", own(me.me)),
        Route("/users/{user}/groups/{group}/tools/{tool}/setup", own(me.personal_setup), methods=["GET", "POST"]),
        Route("/audit", page(audit.audit)),
        Route("/oauth/consent", own(consent.consent), methods=["GET", "POST"]),
        Route("/setup/{token}", own(setup_link.setup_link), methods=["GET", "POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]


def link_routes(site: Site) -> list[Route | Mount]:
    """The stdio gateway's page server: setup links alone, which the link itself opens (contract §7)."""
    return [
        Route(
            "/setup/{token}",
            signin.opened_by_link(site, setup_link.setup_link, setup_link.link_session),
            methods=["GET", "POST"],
        ),
        Route("/oauth/callback", partial(credentials.oauth_callback, site)),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]


def build_dashboard_app(settings: Settings, catalog: Catalog, *, host: str, port: int) -> Starlette:
    """`credgate dashboard`: the pages alone, behind the same Host/Origin guard as the MCP app."""
    site = Site.open(settings, lambda: catalog)
    hosts, origins = allowed_hosts_and_origins(host, port, settings.public_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            site.close()

    return Starlette(
        routes=[*probe_routes(store_checks(site.store)), *routes(site)],
        middleware=[Middleware(RequestGuard, hosts=hosts, origins=origins), Middleware(StoreFaultAnswer)],
        lifespan=lifespan,
    )


def build_link_app(site: Site, port: int) -> Starlette:
    """The stdio gateway's page server on 127.0.0.1:`port`, behind the Host/Origin guard (`link_routes`)."""
    hosts, origins = allowed_hosts_and_origins("127.0.0.1", port, site.settings.public_url)
    guards = [Middleware(RequestGuard, hosts=hosts, origins=origins), Middleware(StoreFaultAnswer)]
    return Starlette(routes=link_routes(site), middleware=guards)
