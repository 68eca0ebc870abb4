"""A setup link's page (contract §7): the setup page of one call's missing credential, for that call alone.

Single use: once it has saved, the link shows that it is done, and its client is told (`SetupLinks.use`).
Served by the dashboard (and `serve --http`) it needs the right person's sign-in: an admin for a group's
credential, the user for their own. Served by the stdio gateway's page server (`web.app.link_routes`), the
link alone opens it: that server listens on loopback, for the local account that runs the agent.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...store import BUILT_IN_ADMIN
from ..session import Session
from ..site import SECURITY_HEADERS, Site
from .me import personal_setup_page
from .setup import setup_page

GONE = "This setup link is unknown or has expired: call the tool again for a new one."


def setup_link(site: Site, request: Request, session: Session, form: FormData) -> Response:
    token = request.path_params["token"]
    record = site.setup_links.find(token)
    if record is None:
        return site.refusal(request, 404, GONE, session)
    if record.used:
        return site.render(request, "setup_link_done.html", session, record=record)
    if record.user is None and not session.admin:
        return site.refusal(
            request, 403, "This setup link is for an administrator: sign in as one to open it.", session
        )

    def finished() -> Response:
        site.setup_links.use(token)
        return RedirectResponse(request.url.path, status_code=303, headers=SECURITY_HEADERS)

    if record.user is not None:  # the page refuses anyone but its user
        owner = record.user
        return personal_setup_page(site, request, session, form, owner, record.group, record.tool, finished, token)
    return setup_page(site, request, session, form, record.group, record.tool, finished, token)


def link_session(site: Site, token: str) -> Session:
    """Over stdio, who the link alone signs in for its page: the user of a personal tool's link, else the
    administrator (the local account holds the store's key already)."""
    record = site.setup_links.find(token)
    user = record.user if record is not None else None
    return Session(
        sid="", issued=0, user=user or BUILT_IN_ADMIN, admin=user is None, by_admin_secret=False, by_link=True
    )
