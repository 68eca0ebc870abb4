"""Signing in and out, and the guard every other page is behind: the admin session cookie, and for a form post
its CSRF token as well."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ...errors import CredgateError, NotFoundError
from ..session import COOKIE_NAME, Session
from ..site import SECURITY_HEADERS, Site

Page = Callable[[Site, Request, Session], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(site: Site, page: Page) -> Endpoint:
    """Only with the admin session; a form post only with its CSRF token as well."""

    async def endpoint(request: Request) -> Response:
        if request.method not in ("GET", "POST"):  # HEAD too: every page reads "not GET" as a change
            return PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "GET, POST"})
        session = site.sessions.verify(request.cookies.get(COOKIE_NAME))
        if session is None:
            if request.method != "GET":
                return site.refusal(request, 403, "Not signed in.")
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        if request.method == "POST":
            form = await request.form()
            if not site.sessions.check_csrf(session, str(form.get("csrf", ""))):
                return site.refusal(request, 403, "The form's CSRF token is missing or wrong: reload the page.")
        try:
            return await page(site, request, session)
        except NotFoundError as exc:
            return site.refusal(request, 404, str(exc), session)
        except CredgateError as exc:  # a rule refused the change (messages never carry a value)
            return site.refusal(request, 409, str(exc), session)

    return endpoint


async def login(site: Site, request: Request) -> Response:
    next_path = request.query_params.get("next", "/")
    if not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path:
        next_path = "/"
    error = ""
    if request.method == "POST":
        form = await request.form()
        if site.sessions.check_secret(str(form.get("secret", ""))):
            response = RedirectResponse(next_path, status_code=303, headers=SECURITY_HEADERS)
            response.set_cookie(
                COOKIE_NAME,
                site.sessions.issue(),
                max_age=site.sessions.max_age,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https" or site.settings.public_url.startswith("https://"),
            )
            return response
        error = "That is not the admin secret."
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


async def logout(site: Site, request: Request, session: Session) -> Response:
    response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE_NAME, httponly=True, samesite="strict")
    return response


async def home(site: Site, request: Request, session: Session) -> Response:
    return RedirectResponse("/credentials", status_code=303)
