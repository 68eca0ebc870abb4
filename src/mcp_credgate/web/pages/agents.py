"""Agents: every agent by name, with its group, a page at a time (revoking one is a change of its group's page)."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ...store import AgentInfo, Page
from ..paging import ListRequest, name_filter
from ..session import Session
from ..site import Site


def agents(site: Site, request: Request, session: Session, form: FormData) -> Response:
    """A page of agents by name (`paging`): `?q=` a name prefix, `?group=` a group's only."""
    ask = ListRequest.of(request, filters=("group",))
    group = name_filter(request.query_params.get("group"))
    page: Page[AgentInfo] = Page(())
    if ask.possible:
        page = site.store.agents_page(limit=ask.limit, after=ask.after, before=ask.before, prefix=ask.q, group=group)
    return site.render(
        request, "agents.html", session, agents=page.items, ask=ask, group=group or "", links=ask.pager(page)
    )
