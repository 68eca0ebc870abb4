"""The dashboard's app-lifetime object, `Site`, and how a page answers: rendered HTML, a refusal, a redirect.

A `Site` lives as long as the app: a store connection of its own, the current declarations (`catalog()` follows
reloads), the admin sessions, the templates and the OAuth2 connections under way. A request brings nothing else
than itself, its session and its form. A page does its work in a worker thread (`Site.run`): store calls block
(on the database, on a refresh's lock, on decryption), and the event loop they would block also serves the
agents' tool calls under `credgate serve --http`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit

import anyio.to_thread
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from ..authorization import AuthorizationServer
from ..config import Settings
from ..credential import mask
from ..declarations import Catalog, CredentialSpec
from ..setup_links import SetupLinks
from ..sso import SsoClient
from ..store import Store
from ..throttle import FailureWindow
from .connections import PendingConnections
from .session import Session, Sessions

HERE = Path(__file__).parent
P = ParamSpec("P")
T = TypeVar("T")
DONE_MESSAGES = {
    "saved": "Saved.",
    "created": "Created.",
    "deleted": "Deleted.",
    "bound": "Binding saved.",
    "allowed": "Tool allowed.",
    "denied": "Tool removed from the group.",
    "revoked": "Agent revoked.",
    "connected": "Connected: the tokens are stored.",
    "setup": "Set up: the agent's next call will use this credential.",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send `Origin: null` with forms
    "Cache-Control": "no-store",
}


@dataclass
class SignInLimits:
    """Failed sign-ins allowed before a wait (app lifetime): per client address, whatever the way (a wrong
    secret, an SSO answer that does not verify, an account no user matches), and per account of the
    organisation's provider (refusals of that one account, from any address)."""

    by_address: FailureWindow = field(default_factory=lambda: FailureWindow(10, 15 * 60))
    by_account: FailureWindow = field(default_factory=lambda: FailureWindow(5, 15 * 60))


class Site:
    """App lifetime: the pages' store, declarations, sessions, templates and pending OAuth2 connections;
    with SSO, the organisation's provider (its metadata and keys, cached); the sign-in limits.

    `Site.open` opens a store connection for the pages alone (tool calls never wait behind a page for it);
    `close` closes it, when the app stops. Thread-safe: the store serialises its calls (an `RLock`), the
    templates are Jinja2's, the pending connections take a lock.
    """

    def __init__(self, store: Store, catalog: Callable[[], Catalog], settings: Settings) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.sessions = Sessions(store, sso_issuer=settings.sso.issuer if settings.sso else None)
        self.pending = PendingConnections()
        self.sign_in: AuthorizationServer | None = None  # remote clients' OAuth sign-in (`serve --http` sets it)
        self.setup_links = SetupLinks(store)  # over the pages' own connection (`share_completions`)
        self.redirect_uri = f"{settings.public_url.rstrip('/')}/oauth/callback"
        self.sso = SsoClient(settings.sso) if settings.sso else None
        self.sso_redirect_uri = f"{settings.public_url.rstrip('/')}/login/sso/callback"
        self.limits = SignInLimits()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
        )
        self.templates.globals["mask"] = mask
        self.templates.globals["redirect_uri"] = self.redirect_uri
        self.templates.globals["sso_host"] = settings.sso.issuer_host if settings.sso else None
        self.templates.filters["q"] = lambda value: quote(str(value), safe="")

    @classmethod
    def open(cls, settings: Settings, catalog: Callable[[], Catalog]) -> Site:
        return cls(Store.open(settings), catalog, settings)

    def share_completions(self, links: SetupLinks) -> None:
        """Tell the clients waiting on the MCP side (`links`, the gateway's) when a page here spends their link:
        the same waiting list, over the pages' own store connection."""
        self.setup_links = SetupLinks(self.store, links.completions)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(*args, **kwargs)` in a worker thread, so that the event loop never waits for the store."""
        return await anyio.to_thread.run_sync(partial(work, *args, **kwargs))

    def render(
        self, request: Request, template: str, session: Session | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        done = request.query_params.get("done", "")
        html = self.templates.get_template(template).render(
            csrf=self.sessions.csrf_token(session) if session and not session.by_link else "",
            signed_in=session is not None,
            me=session,
            message=DONE_MESSAGES.get(done, ""),
            path=request.url.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        spec = context.get("spec")
        if isinstance(spec, CredentialSpec) and spec.oauth is not None:
            # its Connect form is answered with a redirect to the provider
            return allowing_form_target(response, spec.oauth.authorize_url)
        return response

    def refusal(self, request: Request, status: int, text: str, session: Session | None = None) -> HTMLResponse:
        return self.render(request, "refused.html", session, status=status, title="Refused", text=text)


def allowing_form_target(response: HTMLResponse, url: str) -> HTMLResponse:
    """A page whose form is answered with a redirect to `url`'s origin, which its `form-action` must allow
    (browsers check the redirects a form submission follows too)."""
    parts = urlsplit(url)
    target = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
    csp = SECURITY_HEADERS["Content-Security-Policy"].replace("form-action 'self'", f"form-action 'self' {target}")
    response.headers["Content-Security-Policy"] = csp
    return response


def back(path: str, done: str) -> RedirectResponse:
    """After a change: to `path`, which says what was done."""
    return RedirectResponse(f"{path}?done={done}", status_code=303, headers=SECURITY_HEADERS)
