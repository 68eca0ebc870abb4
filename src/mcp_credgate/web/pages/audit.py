"""The audit log: the latest calls, filtered by group, tool and outcome."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ..session import Session
from ..site import Site

OUTCOMES = ("ok", "error", "missing_credential", "denied", "invalid_arguments")


def audit(site: Site, request: Request, session: Session, form: FormData) -> Response:
    q = request.query_params
    group, tool, outcome = q.get("group") or None, q.get("tool") or None, q.get("outcome") or None
    try:
        limit = max(1, min(int(q.get("limit", "100")), 1000))
    except ValueError:
        limit = 100
    rows = site.store.read_audit(group=group, tool=tool, outcome=outcome, limit=limit)
    groups = [g.name for g in site.store.list_groups()]
    return site.render(
        request,
        "audit.html",
        session,
        rows=rows,
        groups=groups,
        tools=sorted(site.catalog().tools),
        outcomes=OUTCOMES,
        selected={"group": group or "", "tool": tool or "", "outcome": outcome or ""},
        limit=limit,
    )
