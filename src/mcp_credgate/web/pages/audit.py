"""The audit log: the latest calls first, a page at a time, filtered by group, tool, outcome and user."""

from __future__ import annotations

from datetime import date

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ..paging import ID_TEXT, ListRequest, name_filter
from ..session import Session
from ..site import Site

OUTCOMES = (
    "ok",
    "error",
    "missing_credential",
    "denied",
    "invalid_arguments",
    "over_budget",
    "approval_required",
    "declined",
)
GROUP_CHOICES = 100  # the group filter is a list up to this many groups; a typed name beyond


def audit(site: Site, request: Request, session: Session, form: FormData) -> Response:
    """`?after=`/`?before=` an audit row's id (older/newer calls), `?limit=` 1..1000 (100), and the filters:
    `?day=YYYY-MM-DD` (UTC) and `?ran=yes` (the calls that ran, which usage counts) besides the names."""
    ask = ListRequest.of(
        request, keys=ID_TEXT, default_limit=100, most=1000, filters=("group", "tool", "outcome", "user", "day", "ran")
    )
    q = request.query_params
    group, tool, outcome, user = (name_filter(q.get(name)) for name in ("group", "tool", "outcome", "user"))
    day, ran = _day(q.get("day")), q.get("ran") == "yes"
    page = site.store.audit_page(
        limit=ask.limit,
        after=ask.after,
        before=ask.before,
        group=group,
        tool=tool,
        outcome=outcome,
        user=user,
        day=day,
        ran=ran,
    )
    groups = site.store.group_names_page(limit=GROUP_CHOICES)
    return site.render(
        request,
        "audit.html",
        session,
        rows=page.items,
        groups=list(groups.items) if groups.after is None else None,
        tools=sorted(site.catalog().tools),
        outcomes=OUTCOMES,
        selected={"group": group or "", "tool": tool or "", "outcome": outcome or "", "user": user or ""},
        day=day.isoformat() if day else "",
        ran=ran,
        limit=ask.limit,
        links=ask.pager(page),
    )


def _day(text: str | None) -> date | None:
    """A `YYYY-MM-DD` day; anything else filters nothing."""
    try:
        return date.fromisoformat(text) if text and len(text) == 10 else None
    except ValueError:
        return None
