"""Signing in and out, and the guard every other page is behind: a session cookie (an admin's for the admin
pages, anyone's for a user's own pages), and for a form post its CSRF token as well. The event loop only reads
the form; the rest runs in a worker thread (`Site.run`).

Guessing secrets is limited per client address (`Site.limits`): past 10 wrong ones in 15 minutes, that
address's next attempts get 429 without being looked at, until the oldest leaves the window. There is no
per-user count on this form, on purpose: it names no user, so a guess is not aimed at one account (it is tested
against all of them, and a 256-bit secret is not guessed); and counting by what a guess claims to be (`cga_`:
the admin) would let anyone lock the built-in admin out, which is the break-glass way in. Per-account limits
are for sign-ins through the provider, whose account is known for sure (`sso`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ...errors import CredgateError, NotFoundError, StoreBusyError, StoreFaultError
from ...throttle import address_key
from ..session import COOKIE_NAME, Session, SignIn
from ..site import SECURITY_HEADERS, Site

Page = Callable[[Site, Request, Session, FormData], Response]
"""A page behind the guard: it runs in a worker thread, with the session and the posted form (empty for a GET)."""
Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(site: Site, page: Page, *, admin_only: bool = True) -> Endpoint:
    """Only with a session (an admin's, unless `admin_only` is False); a form post only with its CSRF token as
    well. A user who is not an admin gets a refusal from an admin page, whatever it names."""

    async def endpoint(request: Request) -> Response:
        if request.method not in ("GET", "POST"):  # HEAD too: every page reads "not GET" as a change
            return PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "GET, POST"})
        session = await site.run(site.sessions.verify, request.cookies.get(COOKIE_NAME))
        if session is None:
            if request.method != "GET":
                return site.refusal(request, 403, "Not signed in.")
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        if admin_only and not session.admin:
            if request.url.path == "/" and request.method == "GET":
                return RedirectResponse("/me", status_code=303)
            return site.refusal(request, 403, "This page is for administrators: see your own at /me.", session)
        form = await request.form() if request.method == "POST" else FormData()
        return await site.run(_answer, site, page, request, session, form)

    return endpoint


def opened_by_link(site: Site, page: Page, session_of: Callable[[Site, str], Session]) -> Endpoint:
    """A setup link's page where no one signs in (the stdio gateway's page server): `session_of(site, token)`
    says who the link stands for. No CSRF token: the unguessable link in the path is the proof, and the guard
    refuses a foreign Origin."""

    async def endpoint(request: Request) -> Response:
        if request.method not in ("GET", "POST"):
            return PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "GET, POST"})
        session = await site.run(session_of, site, request.path_params["token"])
        form = await request.form() if request.method == "POST" else FormData()
        return await site.run(_answer, site, page, request, session, form)

    return endpoint


def _answer(site: Site, page: Page, request: Request, session: Session, form: FormData) -> Response:
    checked = not session.by_link
    if checked and request.method == "POST" and not site.sessions.check_csrf(session, str(form.get("csrf", ""))):
        return site.refusal(request, 403, "The form's CSRF token is missing or wrong: reload the page.")
    try:
        return page(site, request, session, form)
    except NotFoundError as exc:
        return site.refusal(request, 404, str(exc), session)
    except (StoreBusyError, StoreFaultError):  # not the form's fault: 503 with a ref (`guard.StoreFaultAnswer`)
        raise
    except CredgateError as exc:  # a rule refused the change (messages never carry a value)
        return site.refusal(request, 409, str(exc), session)


async def login(site: Site, request: Request) -> Response:
    form = await request.form() if request.method == "POST" else None
    return await site.run(_login, site, request, form)


def safe_next(request: Request) -> str:
    """The `next` of the query: a path of this site, or `/`."""
    next_path = request.query_params.get("next", "/")
    if not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path:
        return "/"
    return next_path


def client_key(request: Request) -> str:
    return address_key(request.client.host if request.client else None)


def signed_in(site: Site, request: Request, response: Response, who: SignIn) -> Response:
    """`response` with the session cookie of `who`."""
    response.set_cookie(
        COOKIE_NAME,
        site.sessions.issue(who),
        max_age=site.sessions.max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or site.settings.public_url.startswith("https://"),
    )
    return response


def too_many(site: Site, request: Request, wait: float, what: str = "failed sign-ins from your address") -> Response:
    seconds = max(1, round(wait))
    response = site.refusal(request, 429, f"Too many {what}: try again in {seconds} s.")
    response.headers["Retry-After"] = str(seconds)
    return response


def _login(site: Site, request: Request, form: FormData | None) -> Response:
    next_path = safe_next(request)
    error = ""
    if form is not None:
        address = client_key(request)
        wait = site.limits.by_address.wait(address)
        if wait:
            return too_many(site, request, wait)
        who = site.sessions.check_secret(str(form.get("secret", "")))
        if who is not None:
            return signed_in(site, request, RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS), who)
        site.limits.by_address.fail(address)
        error = "That is neither the admin secret nor a user's sign-in secret."
    no_secret = site.store.admin_secret_hash() is None
    return site.render(
        request,
        "login.html",
        None,
        status=401 if error else 200,
        error=error,
        no_secret=no_secret,
        next_path=next_path,
    )


def logout(site: Site, request: Request, session: Session, form: FormData) -> Response:
    response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE_NAME, httponly=True, samesite="strict")
    return response


def home(site: Site, request: Request, session: Session, form: FormData) -> Response:
    return RedirectResponse("/credentials", status_code=303)
