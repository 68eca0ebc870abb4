"""Agent groups: the list (and a new group), one group's page, and the changes its forms post."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ... import admin, people
from ...agents import create_agent
from ...allow import AllowEntry
from ...budgets import Limit
from ...declarations import Catalog
from ...errors import ConflictError, CredentialValueError, CredgateError, NotFoundError, StoreBusyError, StoreFaultError
from ...store import GroupInfo, Page
from ..forms import name_errors
from ..paging import ListRequest
from ..session import Session
from ..site import Site, back
from ..usage import MOST_SHOWN, USAGE_DAYS, group_usage
from .signin import Page as PageHandler

AGENTS_SHOWN = 50  # a group page lists this many of its agents, and links to the agents page for the rest
CHOICES = 100  # a credential is chosen from a list up to this many of its type; by typing its name beyond


def groups(site: Site, request: Request, session: Session, form: FormData) -> Response:
    """A page of groups by name (`paging`, `?q=` a name prefix), each with its tools and live agents counted;
    and the form of a new group."""
    error = ""
    if request.method == "POST":
        name = str(form.get("name", "")).strip()
        error = name_errors(name).get("name", "")
        if not error:
            try:
                site.store.add_group(name, str(form.get("description", "")).strip())
            except ConflictError as exc:
                error = str(exc)
        if not error:
            return back(f"/groups/{quote(name, safe='')}", "created")
    ask = ListRequest.of(request)
    page: Page[GroupInfo] = Page(())
    if ask.possible:
        page = site.store.groups_page(limit=ask.limit, after=ask.after, before=ask.before, prefix=ask.q)
    return site.render(
        request,
        "groups.html",
        session,
        status=400 if error else 200,
        groups=page.items,
        agent_counts=site.store.live_agent_counts(g.name for g in page.items),
        ask=ask,
        links=ask.pager(page),
        error=error,
    )


def group(site: Site, request: Request, session: Session, form: FormData) -> Response:
    return _group_page(site, request, session)


def credential_choices(site: Site, type_: str) -> list[str] | None:
    """The names of the credentials of a type, to choose one from a list; None when there are more than
    CHOICES (then a name is typed)."""
    page = site.store.credential_names_page(limit=CHOICES, type_=type_)
    return None if page.after is not None else list(page.items)


def _group_page(
    site: Site, request: Request, session: Session, error: str = "", token: str = "", status: int | None = None
) -> Response:
    name = request.path_params["group"]
    catalog = site.catalog()
    info = site.store.group(name)
    statuses = admin.group_statuses(site.store, catalog, name)
    by_type: dict[str, list[str] | None] = {}
    choices = {}
    for st in statuses:
        if st.credential_type:
            if st.credential_type not in by_type:
                by_type[st.credential_type] = credential_choices(site, st.credential_type)
            choices[st.tool] = by_type[st.credential_type]
    allowable = [n for n in catalog.tools if n not in info.tools and not _via_upstream(catalog, n, info.tools)]
    allowable += [e for u in catalog.upstreams if (e := str(AllowEntry.of_upstream(u))) not in info.tools]
    agents = site.store.agents_page(limit=AGENTS_SHOWN, group=name)
    personal = {entry: people.personal_statuses(site.store, catalog, name, entry) for entry in info.personal}
    limits = site.store.budgets(name)
    return site.render(
        request,
        "group.html",
        session,
        status=status or (400 if error else 200),
        info=info,
        statuses=statuses,
        approvals={st.tool: admin.approval_required_by(catalog, info, st.tool) for st in statuses},
        choices=choices,
        allowable=sorted(allowable),
        agents=agents.items,
        more_agents=agents.after is not None,
        error=error,
        token=token,
        status_text=admin.STATUS_LABELS,
        personal=personal,
        members=site.store.members_page(name, limit=AGENTS_SHOWN).items,
        budgets=[_limit_used(site, limit) for limit in limits],
        budget_tools=[st.tool for st in statuses if catalog.tool(st.tool) is not None],
        usage=group_usage(site.store, name, limits),
        usage_days=USAGE_DAYS,
        most_shown=MOST_SHOWN,
    )


@dataclass(frozen=True)
class LimitUsed:
    limit: Limit
    used: int | str
    resets_at: str


def _limit_used(site: Site, limit: Limit) -> LimitUsed:
    used, resets_at = site.store.used(limit)
    return LimitUsed(limit, limit.used_json(used), datetime.fromtimestamp(resets_at, UTC).strftime("%Y-%m-%d %H:%M"))


GroupChange = Callable[[Site, Request, Session, str, FormData], Response]


def changing(change: GroupChange) -> PageHandler:
    """The page of one change that a group page's forms post: 404 for an unknown group; a change that a rule
    refuses shows the group page again, saying why."""

    def page(site: Site, request: Request, session: Session, form: FormData) -> Response:
        name = request.path_params["group"]
        site.store.group(name)  # 404 for an unknown group
        try:
            return change(site, request, session, name, form)
        except ConflictError as exc:
            return _group_page(site, request, session, error=str(exc), status=409)
        except CredentialValueError as exc:
            return _group_page(site, request, session, error=str(exc))

    return page


def allow(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    approval = form.get("approval") == "on"
    admin.allow(site.store, site.catalog(), name, [str(form.get("tool", ""))], approval=approval)
    return back(_group_path(name), "allowed")


def deny(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    admin.deny(site.store, site.catalog(), name, [str(form.get("tool", ""))])
    return back(_group_path(name), "denied")


def bind(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    """Bind a credential to one of the group's tools; no credential: unbind it."""
    tool, credential = str(form.get("tool", "")), str(form.get("credential", ""))
    if credential:
        admin.bind(site.store, site.catalog(), name, tool, credential)
    else:
        admin.unbind(site.store, site.catalog(), name, tool)
    return back(_group_path(name), "bound")


def add_agent(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    """A new agent: the group page shows its token, once."""
    agent = str(form.get("name", "")).strip()
    problem = name_errors(agent).get("name")
    if problem:
        raise CredentialValueError(f"agent {problem}")
    token = create_agent(site.store, name, agent)
    return _group_page(site, request, session, token=token)


def members(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    """Add a user to the group, or remove one."""
    user = str(form.get("user", "")).strip()
    if form.get("action") == "remove":
        site.store.remove_members(name, [user])
    else:
        site.store.add_members(name, [user])
    return back(_group_path(name), "saved")


def budget(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    """Set a limit (as `credgate budget set`): an amount of calls or spend per window, on all tools or one, for
    the whole group, a member or an agent. A limit the rules refuse shows the group page again, saying why."""
    amount, per = str(form.get("amount", "")).strip(), str(form.get("per", ""))
    kind = form.get("kind")
    try:
        limit = admin.budget_limit(
            site.store,
            site.catalog(),
            name,
            tool=_given(form, "tool"),
            user=_given(form, "user"),
            agent=_given(form, "agent"),
            calls=f"{amount}/{per}" if kind == "calls" else None,
            spend=f"{amount}/{per}" if kind == "spend" else None,
            option=str(kind),
        )
        site.store.set_budget(limit)
    except (StoreBusyError, StoreFaultError):  # not the form's fault: 503 with a ref (`guard.StoreFaultAnswer`)
        raise
    except CredgateError as exc:
        return _group_page(
            site, request, session, error=str(exc), status=409 if isinstance(exc, ConflictError) else 400
        )
    return back(_group_path(name), "saved")


def budget_rm(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    kind = str(form.get("kind", "")) or None
    site.store.remove_budget(name, _given(form, "tool"), _given(form, "user"), _given(form, "agent"), kind)
    return back(_group_path(name), "deleted")


def _given(form: FormData, field: str) -> str | None:
    return str(form.get(field, "")).strip() or None


def revoke(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    agent = str(form.get("agent", ""))
    try:
        found = site.store.agent(agent)
    except NotFoundError:
        found = None
    if found is None or found.group != name:
        raise NotFoundError(f"no agent named {agent!r} in group {name!r}")
    site.store.revoke_agent(agent)
    return back(_group_path(name), "revoked")


def delete(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    site.store.remove_group(name)
    return back("/groups", "deleted")


def no_such_change(site: Site, request: Request, session: Session, name: str, form: FormData) -> Response:
    """Any other `/groups/GROUP/WORD` post: 404, once the group is known to exist."""
    raise NotFoundError(f"no such action: {request.path_params['action']}")


def _group_path(name: str) -> str:
    return f"/groups/{quote(name, safe='')}"


def _via_upstream(catalog: Catalog, name: str, allowed: Mapping[str, Any]) -> bool:
    tool = catalog.tool(name)
    return tool is not None and tool.upstream is not None and str(AllowEntry.of_upstream(tool.upstream)) in allowed
