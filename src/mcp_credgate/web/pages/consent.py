"""The consent page of a remote client's sign-in (contract §6): the signed-in user sees which client asks (its
self-declared name, where the answer goes, whether it registered just now) and chooses one of their groups, or
denies. The request comes signed from /authorize (`authorization.SignInRequest`), so nothing in it can be
changed here; the answer is a redirect to the client with a code (or `access_denied`), `state` and `iss`."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..session import Session
from ..site import SECURITY_HEADERS, Site, allowing_form_target


def consent(site: Site, request: Request, session: Session, form: FormData) -> Response:
    server = site.sign_in
    if server is None:
        return site.refusal(request, 404, "Remote clients do not sign in here.", session)
    sealed = str(form.get("request") or request.query_params.get("request", ""))
    sign_in = server.sign_in_request(sealed)
    client = server.known_client(sign_in.client_id) if sign_in is not None else None
    if sign_in is None or client is None:
        return site.refusal(
            request, 400, "This sign-in request is invalid or has expired: start again from your client.", session
        )
    groups = site.store.user(session.user).groups if site.store.user_exists(session.user) else ()
    if request.method == "POST":
        if form.get("decision") == "allow":
            group = str(form.get("group", ""))
            if group not in groups:
                return site.refusal(request, 403, f"You are not a member of group {group!r}.", session)
            target = server.approve(sign_in, session.user, group)
        else:
            target = server.deny(sign_in)
        return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    page = site.render(
        request,
        "consent.html",
        session,
        client=server.client_view(client, sign_in.redirect_uri),
        groups=groups,
        sealed=sealed,
    )
    return allowing_form_target(page, sign_in.redirect_uri)
