"""Signing in through the organisation's OpenID provider (issue 23): `GET /login/sso?next=...` sends the browser
there, `GET /login/sso/callback` takes its answer and signs the matched user in (`people.sso_user`).

Between the two, the flow (state, nonce, PKCE verifier, `next`) is a sealed cookie (`session.seal_flow`) scoped
to /login/sso, `SameSite=Lax`: the answer is a top-level navigation from the provider's site, which a Strict
cookie would not follow; any replica sharing the store opens it. It is used once.

The session cookie is `SameSite=Strict`, and a browser that arrived from the provider's site would not send it on
a redirect that continues that navigation: the callback answers with a page that moves on by itself (a meta
refresh, a navigation of our own) and links there too.

Limits: failures count per client address as for the secret form; refusals of one account of the provider (no
credgate user for it) count per account, from any address, since that account is known for sure once the ID
token verified; it cannot be used to lock anyone else out.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ... import people
from ...errors import CredgateError, StoreError
from ...sso import FLOW_SECONDS, Identity, SsoClient, SsoError, new_flow
from ..session import SignIn, open_flow, seal_flow
from ..site import SECURITY_HEADERS, Site
from .signin import client_key, safe_next, signed_in, too_many

LOG = logging.getLogger("credgate.sso")
FLOW_COOKIE = "credgate_sso_flow"
FLOW_PATH = "/login/sso"


def _secure(site: Site, request: Request) -> bool:
    return request.url.scheme == "https" or site.settings.public_url.startswith("https://")


def _not_configured() -> Response:
    return PlainTextResponse("Not Found: sign-in through an OpenID provider is not configured", status_code=404)


async def start(site: Site, request: Request) -> Response:
    if site.sso is None:
        return _not_configured()
    wait = site.limits.by_address.wait(client_key(request))
    if wait:
        return too_many(site, request, wait)
    flow = new_flow(safe_next(request))
    try:
        url = await site.sso.authorization_url(flow, site.sso_redirect_uri)
    except SsoError as exc:
        return site.refusal(request, 502, f"Sign-in through {site.sso.settings.issuer_host} is unavailable: {exc}.")
    sealed = await site.run(seal_flow, site.store, flow)
    response = RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        FLOW_COOKIE,
        sealed,
        max_age=FLOW_SECONDS,
        path=FLOW_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(site, request),
    )
    return response


async def callback(site: Site, request: Request) -> Response:
    if site.sso is None:
        return _not_configured()
    address = client_key(request)
    wait = site.limits.by_address.wait(address)
    if wait:
        return _forget_flow(site, request, too_many(site, request, wait))
    flow = await site.run(open_flow, site.store, request.cookies.get(FLOW_COOKIE))
    if flow is None:
        site.limits.by_address.fail(address)
        text = "This answer belongs to no sign-in started in this browser (or it expired): sign in again."
        return _forget_flow(site, request, site.refusal(request, 400, text))
    try:
        identity = await site.sso.finish(flow, dict(request.query_params), site.sso_redirect_uri)
    except SsoError as exc:
        site.limits.by_address.fail(address)
        LOG.warning("SSO sign-in failed from %s: %s", address, exc)
        return _forget_flow(site, request, site.refusal(request, 401, f"Not signed in: {exc}."))
    return _forget_flow(site, request, await _sign_in(site, site.sso, request, identity, flow.next_path, address))


async def _sign_in(
    site: Site, client: SsoClient, request: Request, identity: Identity, next_path: str, address: str
) -> Response:
    account = f"account:{identity.issuer}|{identity.subject}"
    wait = site.limits.by_account.wait(account)
    if wait:
        return too_many(site, request, wait, "refused sign-ins of this account")
    try:
        match = await site.run(people.sso_user, site.store, client.settings, identity)
    except StoreError:  # not the account's fault: 503 with a ref (`guard.StoreFaultAnswer`)
        raise
    except CredgateError as exc:  # the default group was removed meanwhile
        return site.refusal(request, 409, f"Not signed in: {exc}.")
    if match is None:
        site.limits.by_address.fail(address)
        site.limits.by_account.fail(account)
        LOG.warning(
            "SSO sign-in refused: no credgate user for subject %r of %s", identity.subject[:80], identity.issuer
        )
        return site.refusal(request, 403, _no_user_text(identity))
    LOG.info("SSO sign-in of %s (matched by %s)", match.user, match.how)
    target = quote(next_path, safe="/?=&%:@-._~!$()*+,;")  # no quote mark: it goes into the meta refresh
    page = site.render(request, "signed_in.html", None, target=target, user=match.user)
    return await site.run(signed_in, site, request, page, SignIn(match.user, by_admin_secret=False, by_sso=True))


def _no_user_text(identity: Identity) -> str:
    if identity.email is None:
        who = f"subject {identity.subject[:80]!r}"
        add = "credgate user add NAME"
    elif identity.email_verified:
        who, add = identity.email, f"credgate user add NAME --email {identity.email}"
    else:
        who = f"{identity.email}, whose email the provider has not verified"
        add = "credgate user add NAME (an unverified email matches no user)"
    return f"No credgate user for this account ({who}); ask an admin: {add}."


def _forget_flow(site: Site, request: Request, response: Response) -> Response:
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH, httponly=True, samesite="lax", secure=_secure(site, request))
    return response
