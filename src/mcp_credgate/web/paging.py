"""What a list page is asked, and the links to the pages beside it.

Every list (credentials, groups, agents, the audit log) is read a page at a time from a key on (`store.paging`):
`?after=KEY` for the next page, `?before=KEY` for the one before, `?limit=N` rows (kept within bounds) and, for
names, `?q=PREFIX`: the names that start with it, case counting (a range of the store's index, so a search costs
what a page does). What the request holds is checked here: a key or prefix that no name could be is no page
(never an error, never a query), and every link keeps the list's filters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from ..store import Page

NAME_TEXT = re.compile(r"[A-Za-z0-9_-]{0,64}")  # what a name, or the start of one, can be
ID_TEXT = re.compile(r"[0-9]{1,18}")  # an audit row's id


@dataclass(frozen=True)
class ListRequest:
    """`?q=`, `?after=`/`?before=` and `?limit=` of a list page, and the filters its links keep."""

    path: str
    q: str = ""
    after: str | None = None
    before: str | None = None
    limit: int = 50
    default_limit: int = 50
    filters: Mapping[str, str] = field(default_factory=dict)  # the list's other parameters, as asked
    possible: bool = True  # False: what was asked matches no name (a prefix with a character no name has)

    @classmethod
    def of(
        cls,
        request: Request,
        *,
        keys: re.Pattern[str] = NAME_TEXT,
        default_limit: int = 50,
        most: int = 200,
        filters: Sequence[str] = (),
    ) -> ListRequest:
        params = request.query_params
        q = params.get("q", "").strip()
        try:
            limit = max(1, min(int(params.get("limit", "")), most))
        except ValueError:
            limit = default_limit
        after, before = params.get("after"), params.get("before")
        return cls(
            path=request.url.path,
            q=q,
            after=after if after is not None and keys.fullmatch(after) else None,
            before=before if before is not None and keys.fullmatch(before) else None,
            limit=limit,
            default_limit=default_limit,
            filters={name: value for name in filters if (value := params.get(name, ""))},
            possible=NAME_TEXT.fullmatch(q) is not None,
        )

    def href(self, **position: str) -> str:
        """This list (its search, filters and page size) at another position: `after=` or `before=` a key."""
        params: dict[str, Any] = dict(self.filters)
        if self.q:
            params["q"] = self.q
        if self.limit != self.default_limit:
            params["limit"] = self.limit
        params.update(position)
        return f"{self.path}?{urlencode(params)}" if params else self.path

    def pager(self, page: Page[Any]) -> dict[str, str | None]:
        """The links to the next and the previous page (None where the list ends)."""
        return {
            "next": self.href(after=page.after) if page.after is not None else None,
            "prev": self.href(before=page.before) if page.before is not None else None,
            "first": self.href() if self.after is not None or self.before is not None else None,
        }


def name_filter(value: str | None) -> str | None:
    """A filter that names a group or a type: the name, or None when it is empty. A text that no name could
    be stays as it is (it matches nothing), without a NUL, which PostgreSQL refuses in any text."""
    return value.replace("\x00", "") if value else None
