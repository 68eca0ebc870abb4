"""Users (people who sign in: a name, an admin flag, an email, the hash of their sign-in secret), their
memberships of groups, and the personal bindings each member makes for a group's personal tools.

A user is known by a row id: a name removed and added again is a new user, who inherits nothing (memberships,
personal bindings and agents go with the row; credentials the user owned are refused or deleted first)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from ..errors import ConflictError, NotFoundError
from .base import StoreBase, now
from .database import Database, Row
from .paging import names_starting_with, page_rows
from .records import Page, UserInfo

BUILT_IN_ADMIN = "admin"  # signs in with the admin secret of `credgate init` (migration 0009 made it)


@dataclass(frozen=True)
class Removal:
    """What removing a user took with it."""

    agents: tuple[str, ...]  # revoked
    bindings: tuple[tuple[str, str], ...]  # (group, tool or upstream) personal bindings removed
    credentials: tuple[str, ...]  # deleted (with force)


@dataclass(frozen=True)
class SsoLink:
    """Which account at the organisation's OpenID provider a user is linked to; `user_id` is the row's, so a
    name removed and added again is not the same link."""

    user_id: int
    issuer: str
    subject: str


@dataclass(frozen=True)
class SsoMatch:
    """Who an account of the provider signs in, and how they were found."""

    user: str
    how: Literal["subject", "email", "created"]


class Users(StoreBase):
    """The users of a store, their memberships and personal bindings."""

    def add_user(self, name: str, secret_hash: str, *, admin: bool = False, email: str | None = None) -> None:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"a user named {name!r} exists already")
            conn.execute(
                "INSERT INTO users (name, email, is_admin, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, email, int(admin), secret_hash, now()),
            )

    def user(self, name: str) -> UserInfo:
        with self._lock:
            row = self._user_row(self._db, name)
            return self._user_infos([row])[0]

    def require_user(self, name: str) -> None:
        """NotFoundError (one line, naming the fix) unless a user of that name exists."""
        with self._lock:
            self._user_id(self._db, name)

    def user_exists(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM users WHERE name = ?", (name,)))

    def users_page(
        self, *, limit: int = 50, after: str | None = None, before: str | None = None, prefix: str = ""
    ) -> Page[UserInfo]:
        """A page of users in byte order of their names (`paging`), each with the groups they belong to."""
        with self._lock:
            found = page_rows(
                self._db,
                "id, name, email, is_admin, created_at",
                "users",
                "name",
                [],
                [],
                names_starting_with(prefix),
                after=after,
                before=before,
                limit=limit,
            )
            infos = self._user_infos(found.rows)
        return Page(
            tuple(infos),
            after=infos[-1].name if infos and found.more_after else None,
            before=infos[0].name if infos and found.more_before else None,
        )

    def iter_users(self, *, batch: int = 500) -> Iterator[UserInfo]:
        after = None
        while True:
            page = self.users_page(limit=batch, after=after)
            yield from page.items
            if page.after is None:
                return
            after = page.after

    def _user_infos(self, rows: Iterable[Row]) -> list[UserInfo]:
        rows = list(rows)
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        groups: dict[int, list[str]] = {i: [] for i in ids}
        for m in self._db.execute(
            "SELECT m.user_id, (SELECT g.name FROM groups g WHERE g.id = m.group_id) AS grp FROM members m"
            f" WHERE m.user_id IN ({', '.join('?' * len(ids))})",
            ids,
        ):
            groups[m["user_id"]].append(m["grp"])
        return [
            UserInfo(r["name"], bool(r["is_admin"]), r["email"], r["created_at"], tuple(sorted(groups[r["id"]])))
            for r in rows
        ]

    def set_user_secret_hash(self, name: str, secret_hash: str) -> None:
        """A new sign-in secret (its hash): the old one stops working, and the sessions signed under it."""
        with self._write() as conn:
            self._user_row(conn, name)
            conn.execute("UPDATE users SET secret_hash = ? WHERE name = ?", (secret_hash, name))

    def user_secret_hash(self, name: str) -> str | None:
        """The hash of the user's sign-in secret (None: no such user)."""
        rows = self._query("SELECT secret_hash FROM users WHERE name = ?", (name,))
        return rows[0]["secret_hash"] if rows else None

    def user_is_admin(self, name: str) -> bool:
        rows = self._query("SELECT is_admin FROM users WHERE name = ?", (name,))
        return bool(rows and rows[0]["is_admin"])

    def user_by_secret_hash(self, secret_hash: str) -> tuple[str, bool, str] | None:
        """(name, admin, stored hash) of the user whose sign-in secret has this hash, or None."""
        rows = self._query("SELECT name, is_admin, secret_hash FROM users WHERE secret_hash = ?", (secret_hash,))
        return (rows[0]["name"], bool(rows[0]["is_admin"]), rows[0]["secret_hash"]) if rows else None

    def remove_user(self, name: str, *, force: bool = False) -> Removal:
        """Remove a user: their agents are revoked, their memberships and personal bindings go; a user who owns
        credentials only with `force` (which deletes them), and never the last admin."""
        with self._write() as conn:
            row = self._user_row(conn, name)
            uid = row["id"]
            if (
                row["is_admin"]
                and not conn.execute("SELECT 1 FROM users WHERE is_admin = 1 AND id <> ?", (uid,)).fetchone()
            ):
                raise ConflictError(f"{name!r} is the last admin: add another admin (`credgate user add NAME --admin`)")
            owned = [
                r["name"] for r in conn.execute("SELECT name FROM credentials WHERE owner_id = ? ORDER BY name", (uid,))
            ]
            if owned and not force:
                raise ConflictError(
                    f"user {name!r} owns {len(owned)} credential(s) ({', '.join(owned[:5])}"
                    f"{', …' if len(owned) > 5 else ''}); remove them first or use --force (which deletes them)"
                )
            bindings = tuple(
                (r["grp"], r["target"])
                for r in conn.execute(
                    "SELECT (SELECT g.name FROM groups g WHERE g.id = pb.group_id) AS grp, pb.target"
                    " FROM personal_bindings pb WHERE pb.user_id = ? ORDER BY 1, 2",
                    (uid,),
                )
            )
            agents = tuple(
                r["name"]
                for r in conn.execute(
                    "SELECT name FROM agents WHERE user_id = ? AND revoked_at IS NULL ORDER BY name", (uid,)
                )
            )
            conn.execute("UPDATE agents SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (now(), uid))
            conn.execute("UPDATE agents SET user_id = NULL WHERE user_id = ?", (uid,))
            conn.execute("DELETE FROM personal_bindings WHERE user_id = ?", (uid,))
            owned_ids = [r["id"] for r in conn.execute("SELECT id FROM credentials WHERE owner_id = ?", (uid,))]
            for cid in owned_ids:  # bound elsewhere only by an admin's mistake; unbound with them
                conn.execute("UPDATE group_tools SET credential_id = NULL WHERE credential_id = ?", (cid,))
                conn.execute("DELETE FROM group_upstreams WHERE credential_id = ?", (cid,))
                conn.execute("DELETE FROM personal_bindings WHERE credential_id = ?", (cid,))
                conn.execute("DELETE FROM credentials WHERE id = ?", (cid,))
            conn.execute("DELETE FROM users WHERE id = ?", (uid,))
        return Removal(agents, bindings, tuple(owned))

    # -- sign-in through the organisation's OpenID provider (issue 23) --------------------

    def sso_sign_in(
        self,
        issuer: str,
        subject: str,
        *,
        email: str | None,
        email_verified: bool,
        name_hint: str,
        default_group: str | None,
    ) -> SsoMatch | None:
        """The user an account of the provider signs in, in one transaction (two replicas never make the same
        user twice): the user linked to (issuer, subject); else, for a verified email, the one user with that
        email and no link yet, now linked; else, with a default group, a new user (never an admin, no sign-in
        secret: `credgate user secret` gives one) named after `name_hint` (made unique with `-2`, `-3`...),
        linked and made a member of that group. None: no user, and no default group to make one in."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT name FROM users WHERE oidc_issuer = ? AND oidc_subject = ?", (issuer, subject)
            ).fetchone()
            if row is not None:
                return SsoMatch(row["name"], "subject")
            if email is not None and email_verified:
                rows = conn.execute(
                    "SELECT id, name, oidc_subject FROM users WHERE lower(email) = lower(?)", (email,)
                ).fetchall()
                if len(rows) == 1 and rows[0]["oidc_subject"] is None:
                    conn.execute(
                        "UPDATE users SET oidc_issuer = ?, oidc_subject = ? WHERE id = ?",
                        (issuer, subject, rows[0]["id"]),
                    )
                    return SsoMatch(rows[0]["name"], "email")
            if default_group is None:
                return None
            gid = self._group_id(conn, default_group)
            name = self._free_user_name(conn, name_hint)
            conn.execute(
                "INSERT INTO users (name, email, is_admin, oidc_issuer, oidc_subject, created_at)"
                " VALUES (?, ?, 0, ?, ?, ?)",
                (name, email if email_verified else None, issuer, subject, now()),
            )
            conn.execute("INSERT INTO members (group_id, user_id) VALUES (?, ?)", (gid, self._user_id(conn, name)))
            return SsoMatch(name, "created")

    @staticmethod
    def _free_user_name(conn: Database, base: str) -> str:
        for n in range(1, 1000):
            name = base if n == 1 else f"{base[:60]}-{n}"
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
                return name
        raise ConflictError(f"no free user name like {base!r}: add the user with `credgate user add`")

    def sso_link(self, name: str) -> SsoLink | None:
        """The account of the provider the user is linked to (None: no such user, or not linked)."""
        rows = self._query("SELECT id, oidc_issuer, oidc_subject FROM users WHERE name = ?", (name,))
        if not rows or rows[0]["oidc_subject"] is None:
            return None
        return SsoLink(int(rows[0]["id"]), rows[0]["oidc_issuer"], rows[0]["oidc_subject"])

    def unlink_sso(self, name: str) -> bool:
        """Forget the user's link to the provider (their SSO sessions end); False when there was none."""
        with self._write() as conn:
            uid = self._user_id(conn, name)
            cur = conn.execute(
                "UPDATE users SET oidc_issuer = NULL, oidc_subject = NULL WHERE id = ? AND oidc_subject IS NOT NULL",
                (uid,),
            )
            return cur.rowcount > 0

    # -- memberships ---------------------------------------------------------------------

    def add_members(self, group: str, users: Iterable[str]) -> list[str]:
        """Make users members of a group; returns those who were not already."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            added = []
            for name in dict.fromkeys(users):
                uid = self._user_id(conn, name)
                if not conn.execute("SELECT 1 FROM members WHERE group_id = ? AND user_id = ?", (gid, uid)).fetchone():
                    conn.execute("INSERT INTO members (group_id, user_id) VALUES (?, ?)", (gid, uid))
                    added.append(name)
        return added

    def remove_members(self, group: str, users: Iterable[str]) -> None:
        """End memberships (all named users must be members). Their personal bindings stay, unused while they
        are not members (`doctor` reports them); their agents of the group are refused from the next request."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            for name in dict.fromkeys(users):
                uid = self._user_id(conn, name)
                cur = conn.execute("DELETE FROM members WHERE group_id = ? AND user_id = ?", (gid, uid))
                if cur.rowcount == 0:
                    raise NotFoundError(f"user {name!r} is not a member of group {group!r}")

    def has_members(self) -> bool:
        """Whether any group has a member (who could sign a remote client in)."""
        return bool(self._query("SELECT 1 FROM members LIMIT 1"))

    def is_member(self, group: str, user: str) -> bool:
        return bool(
            self._query(
                "SELECT 1 FROM members m WHERE m.group_id = (SELECT id FROM groups WHERE name = ?)"
                " AND m.user_id = (SELECT id FROM users WHERE name = ?)",
                (group, user),
            )
        )

    def members_page(self, group: str, *, limit: int = 50, after: str | None = None) -> Page[str]:
        """A page of the group's members' names, in byte order."""
        with self._lock:
            gid = self._group_id(self._db, group)
            found = page_rows(
                self._db,
                "u.name",
                "users u",
                "u.name",
                ["u.id IN (SELECT m.user_id FROM members m WHERE m.group_id = ?)"],
                [gid],
                names_starting_with(""),
                after=after,
                before=None,
                limit=limit,
            )
        names = [r["name"] for r in found.rows]
        return Page(tuple(names), after=names[-1] if names and found.more_after else None)

    def iter_members(self, group: str, *, batch: int = 500) -> Iterator[str]:
        after = None
        while True:
            page = self.members_page(group, limit=batch, after=after)
            yield from page.items
            if page.after is None:
                return
            after = page.after

    # -- personal bindings -------------------------------------------------------------------

    def bind_personal(self, group: str, target: str, user: str, credential: str) -> None:
        """Bind a credential the user owns for a personal tool (or upstream) of a group the user belongs to.
        Whether the group makes `target` personal is the caller's check (it knows the declarations)."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            uid = self._user_id(conn, user)
            cred = self._credential_row(conn, credential)
            owner = conn.execute("SELECT owner_id FROM credentials WHERE id = ?", (cred["id"],)).fetchone()["owner_id"]
            if owner != uid:
                raise ConflictError(
                    f"credential {credential!r} is not {user}'s: a personal binding takes a credential its user owns"
                    f" (`credgate cred add NAME --owner {user} ...`)"
                )
            self._require_member(conn, gid, uid, group, user)
            conn.execute(
                "INSERT INTO personal_bindings (group_id, target, user_id, credential_id) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (group_id, target, user_id) DO UPDATE SET credential_id = excluded.credential_id",
                (gid, target, uid, cred["id"]),
            )

    def unbind_personal(self, group: str, target: str, user: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            uid = self._user_id(conn, user)
            cur = conn.execute(
                "DELETE FROM personal_bindings WHERE group_id = ? AND target = ? AND user_id = ?", (gid, target, uid)
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"{target!r} has no personal credential of {user!r} bound in group {group!r}")

    def remove_personal_bindings(self, group: str, target: str) -> None:
        """Every member's personal binding for `target` (a tool or an upstream) in the group."""
        with self._write() as conn:
            gid = self._group_id(conn, group)
            conn.execute("DELETE FROM personal_bindings WHERE group_id = ? AND target = ?", (gid, target))

    def personal_bindings(self, group: str, user: str | None = None) -> dict[tuple[str, str], str]:
        """(tool or upstream, user) → the credential bound, in the group (for one user when given)."""
        clauses, params = ["pb.group_id = (SELECT id FROM groups WHERE name = ?)"], [group]
        if user is not None:
            clauses.append("pb.user_id = (SELECT id FROM users WHERE name = ?)")
            params.append(user)
        rows = self._query(
            "SELECT pb.target, (SELECT u.name FROM users u WHERE u.id = pb.user_id) AS usr,"
            " (SELECT c.name FROM credentials c WHERE c.id = pb.credential_id) AS cred"
            f" FROM personal_bindings pb WHERE {' AND '.join(clauses)}",
            params,
        )
        return {(r["target"], r["usr"]): r["cred"] for r in rows}

    def _user_row(self, conn: Database, name: str) -> Row:
        row = conn.execute("SELECT id, name, email, is_admin, created_at FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no user named {name!r} (see `credgate user list`)")
        return row  # type: ignore[no-any-return]
