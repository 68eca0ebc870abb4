"""A signed-in user's own pages (contract §5): "My tools" (what each of my groups needs from me, with its status
and a Set up button), "My credentials" (masked), and the setup page of a personal tool, which opens for its
user alone: anyone else signed in, an admin too, gets a refusal, not the form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ... import admin, people
from ...allow import AllowEntry
from ...errors import CredgateError, NotFoundError
from ..forms import fields_of, plain
from ..session import Session
from ..site import Site, back
from .credentials import new_credential, start_connection

MINE_SHOWN = 200  # my credentials listed on my page


def me(site: Site, request: Request, session: Session, form: FormData) -> Response:
    user = session.user
    catalog = site.catalog()
    tools = []
    groups = site.store.user(user).groups if site.store.user_exists(user) else ()
    for group in groups:
        personal = site.store.group(group).personal
        for entry in sorted(personal):
            mine = {m.user: m for m in people.personal_statuses(site.store, catalog, group, entry)}.get(user)
            if mine is not None:
                tools.append({"group": group, "tool": AllowEntry.parse(entry).name, "entry": entry, "status": mine})
    credentials = []
    for info in site.store.credentials_page(limit=MINE_SHOWN, owner=user).items:
        spec = catalog.types.get(info.type)
        try:
            shown = admin.shown_values(spec, site.store.read_credential(info.name), info.secret_fields)
        except CredgateError:
            shown = {}
        credentials.append({"info": info, "values": shown})
    return site.render(
        request,
        "me.html",
        session,
        user=user,
        groups=groups,
        tools=tools,
        credentials=credentials,
        status_text=admin.STATUS_LABELS,
    )


def personal_setup(site: Site, request: Request, session: Session, form: FormData) -> Response:
    """Bind one of my credentials of the tool's type, or make one (mine) and bind it, for a personal tool of a
    group I belong to."""
    owner, group, tool_name = (request.path_params[k] for k in ("user", "group", "tool"))
    return personal_setup_page(site, request, session, form, owner, group, tool_name, lambda: back("/me", "setup"))


def personal_setup_page(
    site: Site,
    request: Request,
    session: Session,
    form: FormData,
    owner: str,
    group: str,
    tool_name: str,
    finished: Callable[[], Response],
    link: str | None = None,
) -> Response:
    """`owner`'s page of the personal tool `tool_name` in `group`; `finished()` answers a save. `link`: the
    setup link it is opened by, which an OAuth2 connection spends when it ends."""
    if session.user != owner:
        return site.refusal(request, 403, f"This setup page is {owner}'s own: sign in as {owner} to open it.", session)
    catalog = site.catalog()
    site.store.group(group)
    if not site.store.is_member(group, owner):
        raise NotFoundError(f"you are not a member of group {group!r}")
    tool = admin.bindable(catalog, tool_name)
    spec = tool.credential
    assert spec is not None
    admin.check_scope(site.store, catalog, group, tool_name, personal=True)
    if not admin.scope_entries(site.store, catalog, group, tool_name):
        raise NotFoundError(f"group {group!r} does not allow {tool_name!r}")
    mine = [c.name for c in site.store.credentials_page(limit=MINE_SHOWN, owner=owner, type_=spec.type).items]
    if session.by_link:  # opened by its link alone: it creates a credential, binds no stored one (see `setup`)
        mine = []
    context: dict[str, Any] = {
        "owner": owner,
        "group": group,
        "tool": tool,
        "tool_name": tool_name,
        "spec": spec,
        "mine": mine,
    }
    context["fields"] = fields_of(spec)
    if request.method == "GET":
        return site.render(request, "personal_setup.html", session, **context, errors={}, given={}, name="")
    if form.get("mode") == "existing" and not session.by_link:
        people.bind_personal(site.store, catalog, group, tool_name, str(form.get("credential", "")), owner)
        return finished()
    name, values, connect, errors = new_credential(site, spec, form, ": pick it above instead")
    if errors:
        given = plain(spec, values)
        return site.render(
            request, "personal_setup.html", session, status=400, **context, errors=errors, given=given, name=name
        )
    if connect:
        return start_connection(site, spec, name, values, values, None, (group, tool_name), owner, link)
    admin.add_credential(site.store, spec, name, values, owner)
    people.bind_personal(site.store, catalog, group, tool_name, name, owner)
    return finished()
