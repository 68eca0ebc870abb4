"""Keyset pagination, shared by every list of the store: a page is the next `limit` rows after (or before) a
key, found through an index on that key, so that page 20,000 of a million rows costs what page 1 does (no
OFFSET, which reads and drops every row before the page).

Each list is ordered by a unique key: a name (credentials, groups, agents), in byte order on both backends
(schema migration 0008), or the audit log's row id, newest first. A name prefix is a range of keys:
`[prefix, the first string after every one that starts with it)`. Every statement is bounded on its key, so
that each is an index search (tests/store/test_query_plans.py asks both databases).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from .database import Database, Row

Key = TypeVar("Key", str, int)


@dataclass(frozen=True)
class KeyRange(Generic[Key]):
    """Keys from `low` to `high` in ascending order, each end included or not; None: open on that side."""

    low: Key | None = None
    low_included: bool = True
    high: Key | None = None
    high_included: bool = False

    def above(self, key: Key, *, included: bool) -> KeyRange[Key]:
        """The part of the range above `key` (from it, when `included`)."""
        if self.low is not None and (self.low > key or (self.low == key and not self.low_included)):
            return self
        return replace(self, low=key, low_included=included)

    def below(self, key: Key, *, included: bool) -> KeyRange[Key]:
        """The part of the range below `key` (up to it, when `included`)."""
        if self.high is not None and (self.high < key or (self.high == key and not self.high_included)):
            return self
        return replace(self, high=key, high_included=included)

    def clauses(self, column: str) -> tuple[list[str], list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if self.low is not None:
            clauses.append(f"{column} {'>=' if self.low_included else '>'} ?")
            params.append(self.low)
        if self.high is not None:
            clauses.append(f"{column} {'<=' if self.high_included else '<'} ?")
            params.append(self.high)
        return clauses, params


def names_starting_with(prefix: str) -> KeyRange[str]:
    """The names that start with `prefix` (all of them for ""), in byte order: from the prefix itself up to,
    not including, the first string that sorts after every name that starts with it."""
    return KeyRange(low=prefix, high=_after_every_extension(prefix))


def _after_every_extension(prefix: str) -> str | None:
    stem = prefix.rstrip(chr(0x10FFFF))
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no text: the next character is U+E000
        following = 0xE000
    return stem[:-1] + chr(following)


@dataclass(frozen=True)
class Rows:
    """The rows of one page, in list order, and whether the list goes on before and after them."""

    rows: list[Row]
    more_before: bool
    more_after: bool


def page_rows(
    db: Database,
    columns: str,
    source: str,
    key: str,
    where: Sequence[str],
    params: Sequence[object],
    keys: KeyRange[Key],
    *,
    after: Key | None,
    before: Key | None,
    limit: int,
    descending: bool = False,
) -> Rows:
    """`SELECT columns FROM source` filtered by `where` (with `params`), for keys in `keys`: the
    `limit` rows after the key `after`, else before the key `before`, else the first ones, in the list's order
    (ascending on `key`, or `descending`). One statement for the rows, one more to tell whether rows lie on
    the other side of the key given."""
    backwards = after is None and before is not None
    edge = before if backwards else after
    below = backwards != descending  # in ascending key order, does the page lie below the edge?
    window = keys
    if edge is not None:
        window = keys.below(edge, included=False) if below else keys.above(edge, included=False)
    rows = _select(
        db, f"SELECT {columns} FROM {source}", key, where, params, window, ascending=not below, limit=limit + 1
    )
    more = len(rows) > limit
    del rows[limit:]
    other = False
    if edge is not None:
        rest = keys.above(edge, included=True) if below else keys.below(edge, included=True)
        other = bool(_select(db, f"SELECT 1 AS found FROM {source}", key, where, params, rest, limit=1))
    if backwards:
        rows.reverse()
        return Rows(rows, more_before=more, more_after=other)
    return Rows(rows, more_before=other, more_after=more)


def _select(
    db: Database,
    select: str,
    key: str,
    where: Sequence[str],
    params: Sequence[object],
    keys: KeyRange[Key],
    *,
    limit: int,
    ascending: bool = True,
) -> list[Row]:
    bounds: list[str]
    bound_params: list[object]
    bounds, bound_params = keys.clauses(key)
    clauses = [*where, *bounds]
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    order = "ASC" if ascending else "DESC"
    # The limit is written in the statement, not bound: PostgreSQL then plans a prepared statement once for all
    # (with a bound limit, a big table's generic plan looks dearer than a custom one: it plans every time).
    sql = f"{select}{condition} ORDER BY {key} {order} LIMIT {int(limit)}"
    return list(db.execute(sql, (*params, *bound_params)).fetchall())
