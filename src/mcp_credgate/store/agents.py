"""Agents (a name, its group and the hash of its bearer token) and the dashboard's admin secret (its hash):
who may call the gateway and who may administer it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..errors import ConflictError, NotFoundError
from .base import StoreBase, now
from .database import Row
from .paging import names_starting_with, page_rows
from .records import AgentIdentity, AgentInfo, Page

_AGENTS = "agents a"
_AGENT_COLUMNS = (  # the group's name by a subquery: a page never joins every group (see groups._group_infos)
    "a.name, (SELECT g.name FROM groups g WHERE g.id = a.group_id) AS grp, a.created_at, a.last_used_at, a.revoked_at,"
    " (SELECT u.name FROM users u WHERE u.id = a.user_id) AS usr, a.kind, a.client_id"
)


class Agents(StoreBase):
    """The agents of a store and the admin secret."""

    def add_agent(self, group: str, name: str, token_hash: str, user: str | None = None) -> None:
        """An agent of the group, acting for `user` (a member of the group) or for nobody."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"an agent named {name!r} exists already")
            uid = None
            if user is not None:
                uid = self._user_id(conn, user)
                self._require_member(conn, gid, uid, group, user)
            conn.execute(
                "INSERT INTO agents (name, group_id, token_hash, created_at, user_id) VALUES (?, ?, ?, ?, ?)",
                (name, gid, token_hash, now(), uid),
            )

    def agents_page(
        self,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        prefix: str = "",
        group: str | None = None,
    ) -> Page[AgentInfo]:
        """A page of agents in byte order of their names (`paging`): those whose name starts with `prefix`, of
        `group` when given, after the name `after` (else before `before`)."""
        where, params = (
            (["a.group_id = (SELECT id FROM groups WHERE name = ?)"], [group]) if group is not None else ([], [])
        )
        with self._lock:
            found = page_rows(
                self._db,
                _AGENT_COLUMNS,
                _AGENTS,
                "a.name",
                where,
                params,
                names_starting_with(prefix),
                after=after,
                before=before,
                limit=limit,
            )
        agents = [_agent(r) for r in found.rows]
        return Page(
            tuple(agents),
            after=agents[-1].name if agents and found.more_after else None,
            before=agents[0].name if agents and found.more_before else None,
        )

    def iter_agents(self, *, group: str | None = None, batch: int = 500) -> Iterator[AgentInfo]:
        """Every agent (of `group`), read a page at a time (see `iter_credentials`)."""
        after = None
        while True:
            page = self.agents_page(limit=batch, after=after, group=group)
            yield from page.items
            if page.after is None:
                return
            after = page.after

    def list_agents(self) -> list[AgentInfo]:
        """Every agent at once, by name: for small stores and tests (`iter_agents` streams)."""
        return list(self.iter_agents())

    def agent(self, name: str) -> AgentInfo:
        rows = self._query(f"SELECT {_AGENT_COLUMNS} FROM {_AGENTS} WHERE a.name = ?", (name,))
        if not rows:
            raise NotFoundError(f"no agent named {name!r} (see `credgate agent list`)")
        return _agent(rows[0])

    def live_agent_counts(self, groups: Iterable[str]) -> dict[str, int]:
        """Group → how many of its agents are not revoked (groups without one left out)."""
        names = list(dict.fromkeys(groups))
        if not names:
            return {}
        rows = self._query(
            "SELECT g.name, (SELECT COUNT(*) FROM agents a WHERE a.group_id = g.id AND a.revoked_at IS NULL) AS n"
            f" FROM groups g WHERE g.name IN ({', '.join('?' * len(names))})",
            names,
        )
        return {r["name"]: int(r["n"]) for r in rows if r["n"]}

    def has_live_agent(self) -> bool:
        return bool(self._query("SELECT 1 FROM agents WHERE revoked_at IS NULL LIMIT 1"))

    def revoke_agent(self, name: str) -> None:
        with self._write() as conn:
            cur = conn.execute("UPDATE agents SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now(), name))
            if cur.rowcount == 0:
                if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone():
                    raise ConflictError(f"agent {name!r} is already revoked")
                raise NotFoundError(f"no agent named {name!r} (see `credgate agent list`)")

    def agent_by_token_hash(self, token_hash: str) -> AgentIdentity | None:
        """The live agent with this token hash, or None; None too when the user it acts for is no longer a
        member of its group."""
        rows = self._query(
            "SELECT a.name, g.name AS grp, a.token_hash, a.user_id,"
            " (SELECT u.name FROM users u WHERE u.id = a.user_id) AS usr,"
            " (SELECT 1 FROM members m WHERE m.group_id = a.group_id AND m.user_id = a.user_id) AS member"
            " FROM agents a JOIN groups g ON g.id = a.group_id WHERE a.token_hash = ? AND a.revoked_at IS NULL",
            (token_hash,),
        )
        if not rows or (rows[0]["user_id"] is not None and not rows[0]["member"]):
            return None
        return AgentIdentity(rows[0]["name"], rows[0]["grp"], rows[0]["token_hash"], rows[0]["usr"])

    def touch_agent(self, name: str) -> None:
        with self._write(changes_setup=False) as conn:
            conn.execute("UPDATE agents SET last_used_at = ? WHERE name = ?", (now(), name))

    def set_admin_secret_hash(self, secret_hash: str) -> None:
        """Replace the admin secret (its hash): sessions signed under the old one end with it."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO admin_secret (id, secret_hash, created_at) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, created_at = excluded.created_at",
                (secret_hash, now()),
            )

    def admin_secret_hash(self) -> str | None:
        rows = self._query("SELECT secret_hash FROM admin_secret WHERE id = 1")
        return str(rows[0]["secret_hash"]) if rows else None


def _agent(r: Row) -> AgentInfo:
    return AgentInfo(
        r["name"], r["grp"], r["created_at"], r["last_used_at"], r["revoked_at"], r["usr"], r["kind"], r["client_id"]
    )
