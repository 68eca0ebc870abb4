"""Users (an admin's page): every user a page at a time, a new user (whose sign-in secret is shown once), and
removing one. Memberships are changed on a group's page."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ... import people
from ...errors import ConflictError
from ...store import Page, UserInfo
from ..forms import name_errors
from ..paging import ListRequest
from ..session import Session
from ..site import Site, back


def users(site: Site, request: Request, session: Session, form: FormData) -> Response:
    """A page of users by name (`?q=` a name prefix); posted: a new user, or one removed."""
    error, secret, status = "", "", 200
    if request.method == "POST":
        name = str(form.get("name", "")).strip()
        if form.get("action") == "remove":
            try:
                site.store.remove_user(name, force=form.get("force") == "yes")
            except ConflictError as exc:
                error, status = str(exc), 409
            else:
                return back("/users", "deleted")
        else:
            error = name_errors(name).get("name", "")
            email = str(form.get("email", "")).strip() or None
            if not error:
                try:
                    secret = people.create_user(site.store, name, admin=form.get("admin") == "yes", email=email)
                except ConflictError as exc:
                    error, status = str(exc), 409
            else:
                status = 400
    ask = ListRequest.of(request)
    page: Page[UserInfo] = Page(())
    if ask.possible:
        page = site.store.users_page(limit=ask.limit, after=ask.after, before=ask.before, prefix=ask.q)
    return site.render(
        request,
        "users.html",
        session,
        status=status,
        users=page.items,
        ask=ask,
        links=ask.pager(page),
        error=error,
        secret=secret,
        added=str(form.get("name", "")).strip() if secret else "",
    )
