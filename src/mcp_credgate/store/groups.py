"""Agent groups, the tools each allows (`NAME.*` for all of an upstream's), the credential bound to each tool
or upstream, and the binding cache that answers "allowed, and with what?" at call time. The cache belongs to
one connection and lives as long as it; it holds ciphertext only, never a value."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from ..allow import AllowEntry
from ..crypto import Keyring
from ..errors import ConflictError, NotFoundError
from .base import StoreBase, now
from .database import Database, Row
from .paging import Rows, names_starting_with, page_rows
from .records import Binding, GroupInfo, Page, SealedCredential


class Groups(StoreBase):
    """The groups of a store, their allowed tools and bindings."""

    def __init__(self, db: Database, keyring: Keyring) -> None:
        super().__init__(db, keyring)
        # (group, tool, user) → Binding, valid while the database's change marker is unchanged (no change committed
        # by another connection) and this connection wrote nothing. It holds ciphertext only, never a value.
        self._bindings: dict[tuple[str, str, str | None], Binding] = {}
        self._bindings_version = -1

    def _drop_caches(self) -> None:
        super()._drop_caches()
        self._bindings.clear()

    def add_group(self, name: str, description: str = "") -> None:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"an agent group named {name!r} exists already")
            conn.execute(
                "INSERT INTO groups (name, description, created_at) VALUES (?, ?, ?)", (name, description, now())
            )

    def remove_group(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM groups WHERE id = ?", (self._group_id(conn, name),))

    def group_exists(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM groups WHERE name = ?", (name,)))

    def groups_page(
        self, *, limit: int = 50, after: str | None = None, before: str | None = None, prefix: str = ""
    ) -> Page[GroupInfo]:
        """A page of groups in byte order of their names (`paging`), with their tools and upstreams' bindings:
        those whose name starts with `prefix`, after the name `after` (else before `before`)."""
        with self._lock:
            found = self._found_groups(limit, after, before, prefix)
            infos = self._group_infos(found.rows)
        return Page(
            tuple(infos),
            after=infos[-1].name if infos and found.more_after else None,
            before=infos[0].name if infos and found.more_before else None,
        )

    def group_names_page(
        self, *, limit: int = 50, after: str | None = None, before: str | None = None, prefix: str = ""
    ) -> Page[str]:
        """The names alone of `groups_page` (to choose one from)."""
        with self._lock:
            found = self._found_groups(limit, after, before, prefix)
        names = [r["name"] for r in found.rows]
        return Page(
            tuple(names),
            after=names[-1] if names and found.more_after else None,
            before=names[0] if names and found.more_before else None,
        )

    def _found_groups(self, limit: int, after: str | None, before: str | None, prefix: str) -> Rows:
        return page_rows(
            self._db,
            "id, name, description, created_at",
            "groups",
            "name",
            [],
            [],
            names_starting_with(prefix),
            after=after,
            before=before,
            limit=limit,
        )

    def iter_groups(self, *, prefix: str = "", batch: int = 500) -> Iterator[GroupInfo]:
        """Every group (whose name starts with `prefix`), read a page at a time (see `iter_credentials`)."""
        after = None
        while True:
            page = self.groups_page(limit=batch, after=after, prefix=prefix)
            yield from page.items
            if page.after is None:
                return
            after = page.after

    def list_groups(self) -> list[GroupInfo]:
        """Every group at once: for small stores and tests (`iter_groups` streams)."""
        return list(self.iter_groups())

    def group(self, name: str) -> GroupInfo:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, description, created_at FROM groups WHERE name = ?", (name,)
            ).fetchall()
            if not rows:
                raise NotFoundError(f"no agent group named {name!r} (see `credgate group list`)")
            return self._group_infos(rows)[0]

    def _group_infos(self, groups: Sequence[Row]) -> list[GroupInfo]:
        """These groups (rows of id, name, description, created_at) with their tools and upstream bindings, in
        the order given. Under the lock."""
        if not groups:
            return []
        ids = [g["id"] for g in groups]
        marks = ", ".join("?" * len(ids))
        # Look-ups by key, the credential's name by a subquery: no join a planner without statistics (a
        # just-loaded PostgreSQL table) could make a hash join over every credential. Sorted here, in byte order.
        tools: dict[int, dict[str, str | None]] = {i: {} for i in ids}
        personal: dict[int, set[str]] = {i: set() for i in ids}
        approval: dict[int, set[str]] = {i: set() for i in ids}
        for r in sorted(
            self._db.execute(
                "SELECT gt.group_id, gt.tool, gt.personal, gt.approval,"
                " (SELECT c.name FROM credentials c WHERE c.id = gt.credential_id) AS cred"
                f" FROM group_tools gt WHERE gt.group_id IN ({marks})",
                ids,
            ),
            key=lambda r: str(r["tool"]),
        ):
            tools[r["group_id"]][r["tool"]] = r["cred"]
            if r["personal"]:
                personal[r["group_id"]].add(r["tool"])
            if r["approval"]:
                approval[r["group_id"]].add(r["tool"])
        upstreams: dict[int, dict[str, str]] = {i: {} for i in ids}
        for r in sorted(
            self._db.execute(
                "SELECT gu.group_id, gu.upstream, (SELECT c.name FROM credentials c WHERE c.id = gu.credential_id)"
                f" AS name FROM group_upstreams gu WHERE gu.group_id IN ({marks})",
                ids,
            ),
            key=lambda r: str(r["upstream"]),
        ):
            upstreams[r["group_id"]][r["upstream"]] = r["name"]
        return [
            GroupInfo(
                g["name"],
                g["description"],
                g["created_at"],
                tools[g["id"]],
                upstreams[g["id"]],
                frozenset(personal[g["id"]]),
                frozenset(approval[g["id"]]),
            )
            for g in groups
        ]

    def upstream_bindings(self, group: str) -> dict[str, str]:
        """Upstream MCP server → the credential bound for all its tools, in this group."""
        rows = self._query(
            "SELECT gu.upstream, c.name FROM groups g JOIN group_upstreams gu ON gu.group_id = g.id"
            " JOIN credentials c ON c.id = gu.credential_id WHERE g.name = ? ORDER BY gu.upstream",
            (group,),
        )
        return {r["upstream"]: r["name"] for r in rows}

    def bind_upstream(self, group: str, upstream: str, credential: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cred = self._credential_row(conn, credential)
            conn.execute(
                "INSERT INTO group_upstreams (group_id, upstream, credential_id) VALUES (?, ?, ?)"
                " ON CONFLICT (group_id, upstream) DO UPDATE SET credential_id = excluded.credential_id",
                (gid, upstream, cred["id"]),
            )

    def unbind_upstream(self, group: str, upstream: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cur = conn.execute("DELETE FROM group_upstreams WHERE group_id = ? AND upstream = ?", (gid, upstream))
            if cur.rowcount == 0:
                raise NotFoundError(f"upstream {upstream!r} has no credential bound in group {group!r}")

    def allow(
        self,
        group: str,
        tools: Iterable[str],
        *,
        personal: bool = False,
        force: bool = False,
        targets: Mapping[str, str] | None = None,
        approval: bool = False,
    ) -> list[str]:
        """Allow tools in a group, shared or `personal` (each member binds their own), each call first
        `approval`-ed by a person or not. A tool allowed already takes the scope and the approval given: a
        change of scope is refused while it has bindings of the other scope, unless `force` (which removes
        them). `targets` names what a tool's bindings are made for (an upstream's tools: the upstream; else the
        tool). Returns the tools whose bindings were removed."""
        targets = targets or {}
        removed: list[str] = []
        with self._write() as conn:
            gid = self._group_id(conn, group)
            for tool in dict.fromkeys(tools):
                row = conn.execute(
                    "SELECT personal, credential_id FROM group_tools WHERE group_id = ? AND tool = ?", (gid, tool)
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO group_tools (group_id, tool, personal, approval) VALUES (?, ?, ?, ?)",
                        (gid, tool, int(personal), int(approval)),
                    )
                    continue
                conn.execute(
                    "UPDATE group_tools SET approval = ? WHERE group_id = ? AND tool = ?", (int(approval), gid, tool)
                )
                if bool(row["personal"]) == personal:
                    continue
                target = targets.get(tool, tool)
                if _scope_bindings(conn, gid, tool, target, personal=not personal):
                    if not force:
                        raise ConflictError(
                            f"tool {tool!r} has {'personal' if not personal else 'a shared'} binding(s) in group"
                            f" {group!r}: to make it {'personal' if personal else 'shared'}, unbind first"
                            " or use --force (which unbinds)"
                        )
                    _clear_scope_bindings(conn, gid, tool, target, personal=not personal)
                    removed.append(tool)
                conn.execute(
                    "UPDATE group_tools SET personal = ?, credential_id = NULL WHERE group_id = ? AND tool = ?",
                    (int(personal), gid, tool),
                )
        return removed

    def personal_tools(self, group: str) -> frozenset[str]:
        """The allowed entries of the group that are personal."""
        rows = self._query(
            "SELECT gt.tool FROM group_tools gt WHERE gt.group_id = (SELECT id FROM groups WHERE name = ?)"
            " AND gt.personal = 1",
            (group,),
        )
        return frozenset(r["tool"] for r in rows)

    def deny(self, group: str, tools: Iterable[str]) -> list[str]:
        """Remove tools from a group (their bindings go too). Returns the tools that were bound."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            tools = list(tools)
            marks = ",".join("?" * len(tools))
            bound = [
                r["tool"]
                for r in conn.execute(
                    f"SELECT tool FROM group_tools WHERE group_id = ? AND tool IN ({marks})"
                    " AND credential_id IS NOT NULL",
                    (gid, *tools),
                )
            ]
            conn.execute(f"DELETE FROM group_tools WHERE group_id = ? AND tool IN ({marks})", (gid, *tools))
            conn.execute(f"DELETE FROM personal_bindings WHERE group_id = ? AND target IN ({marks})", (gid, *tools))
        return bound

    def bind(self, group: str, tool: str, credential: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cred = self._credential_row(conn, credential)
            cur = conn.execute(
                "UPDATE group_tools SET credential_id = ? WHERE group_id = ? AND tool = ?", (cred["id"], gid, tool)
            )
            if cur.rowcount == 0:
                raise ConflictError(
                    f"group {group!r} does not allow tool {tool!r}: run `credgate group allow {group} {tool}` first"
                )

    def unbind(self, group: str, tool: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            cur = conn.execute(
                "UPDATE group_tools SET credential_id = NULL WHERE group_id = ? AND tool = ?"
                " AND credential_id IS NOT NULL",
                (gid, tool),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"tool {tool!r} has no credential bound in group {group!r}")

    def allowed_tools(self, group: str) -> dict[str, str | None]:
        """Tool → bound credential name, for the group's allowed tools (empty if the group is unknown)."""
        rows = self._query(
            "SELECT gt.tool, c.name AS cred FROM groups g JOIN group_tools gt ON gt.group_id = g.id"
            " LEFT JOIN credentials c ON c.id = gt.credential_id WHERE g.name = ?",
            (group,),
        )
        return {r["tool"]: r["cred"] for r in rows}

    def binding(self, group: str, tool: str, upstream: str | None = None, user: str | None = None) -> Binding:
        """At call time: is the tool allowed for the group, and what does the credential bound for it hold (still
        sealed: `open_sealed` decrypts it once the caller decides to use it)? One cheap version check while
        nothing changed, a few look-ups by key otherwise: a rebind by any process is seen at the next call.

        A tool of an upstream MCP server is allowed by name or by `UPSTREAM.*`, and its credential is the
        one bound to the upstream. A personal tool's credential is the one `user` bound for it (none when the
        caller acts for nobody or the user is not a member of the group)."""
        with self._lock:
            version = self._db.change_marker()
            if version != self._bindings_version:
                self._bindings.clear()
                self._bindings_version = version
            cached = self._bindings.get((group, tool, user))
            if cached is not None:
                return cached
        found = self._read_binding(group, tool, upstream, user)
        with self._lock:
            if self._bindings_version == version:
                self._bindings[(group, tool, user)] = found
        return found

    def _read_binding(self, group: str, tool: str, upstream: str | None, user: str | None) -> Binding:
        if upstream is None:
            allowed = self._query(
                "SELECT g.id AS gid, gt.personal, gt.approval, gt.credential_id AS cid FROM groups g"
                " JOIN group_tools gt ON gt.group_id = g.id WHERE g.name = ? AND gt.tool = ?",
                (group, tool),
            )
        else:
            allowed = self._query(
                "SELECT g.id AS gid, MAX(gt.personal) AS personal, MAX(gt.approval) AS approval,"
                " (SELECT gu.credential_id FROM group_upstreams gu WHERE gu.group_id = g.id AND gu.upstream = ?) AS cid"
                " FROM groups g JOIN group_tools gt ON gt.group_id = g.id WHERE g.name = ? AND gt.tool IN (?, ?)"
                " GROUP BY g.id",
                (upstream, group, tool, str(AllowEntry.of_upstream(upstream))),
            )
        if not allowed:
            return Binding(allowed=False)
        gid, personal, cid = allowed[0]["gid"], bool(allowed[0]["personal"]), allowed[0]["cid"]
        approval = bool(allowed[0]["approval"])
        member = user is None or bool(
            self._query(
                "SELECT 1 FROM members WHERE group_id = ? AND user_id = (SELECT id FROM users WHERE name = ?)",
                (gid, user),
            )
        )
        if personal:
            mine = (
                self._query(
                    "SELECT credential_id FROM personal_bindings WHERE group_id = ? AND target = ?"
                    " AND user_id = (SELECT id FROM users WHERE name = ?)",
                    (gid, upstream or tool, user),
                )
                if user is not None and member
                else []
            )
            cid = mine[0]["credential_id"] if mine else None
        if cid is None:
            return Binding(allowed=True, personal=personal, member=member, approval=approval)
        rows = self._query(
            "SELECT c.id AS cid, c.name, c.type, c.uid, c.key_id, c.wrapped_dek, c.expires_at, v.field, v.secret,"
            " v.ciphertext FROM credentials c LEFT JOIN credential_values v ON v.credential_id = c.id WHERE c.id = ?",
            (cid,),
        )
        if not rows:  # removed between two look-ups: the next call reads again
            return Binding(allowed=True, personal=personal, member=member, approval=approval)
        values = tuple(r for r in rows if r["field"] is not None)
        return Binding(
            allowed=True,
            credential=rows[0]["name"],
            sealed=SealedCredential(rows[0], values),
            personal=personal,
            member=member,
            approval=approval,
        )

    def bound_targets(self) -> list[tuple[str, str, str]]:
        """(group, tool or upstream, credential) of every binding, and (group, allowed entry, "") rows."""
        rows = self._query(
            "SELECT g.name AS grp, b.target, c.name AS cred FROM bindings b JOIN groups g ON g.id = b.group_id"
            " JOIN credentials c ON c.id = b.credential_id"
            " UNION ALL SELECT g.name, gt.tool, '' FROM group_tools gt JOIN groups g ON g.id = gt.group_id"
            " ORDER BY 1, 2"
        )
        return [(r["grp"], r["target"], r["cred"]) for r in rows]


def _scope_bindings(conn: Database, gid: int, tool: str, target: str, *, personal: bool) -> bool:
    """Whether the tool (bound for `target`) has bindings of that scope in the group."""
    if personal:
        sql, params = "SELECT 1 FROM personal_bindings WHERE group_id = ? AND target = ?", (gid, target)
    elif target != tool:
        sql, params = "SELECT 1 FROM group_upstreams WHERE group_id = ? AND upstream = ?", (gid, target)
    else:
        sql, params = (
            "SELECT 1 FROM group_tools WHERE group_id = ? AND tool = ? AND credential_id IS NOT NULL",
            (gid, tool),
        )
    return conn.execute(sql, params).fetchone() is not None


def _clear_scope_bindings(conn: Database, gid: int, tool: str, target: str, *, personal: bool) -> None:
    if personal:
        conn.execute("DELETE FROM personal_bindings WHERE group_id = ? AND target = ?", (gid, target))
    elif target != tool:
        conn.execute("DELETE FROM group_upstreams WHERE group_id = ? AND upstream = ?", (gid, target))
    else:
        conn.execute("UPDATE group_tools SET credential_id = NULL WHERE group_id = ? AND tool = ?", (gid, tool))
