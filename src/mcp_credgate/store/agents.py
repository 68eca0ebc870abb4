"""Agents (a name, its group and the hash of its bearer token) and the dashboard's admin secret (its hash):
who may call the gateway and who may administer it."""

from __future__ import annotations

from ..errors import ConflictError, NotFoundError
from .base import StoreBase, now
from .records import AgentInfo


class Agents(StoreBase):
    """The agents of a store and the admin secret."""

    def add_agent(self, group: str, name: str, token_hash: str) -> None:
        with self._write() as conn:
            gid = self._group_id(conn, group)
            if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"an agent named {name!r} exists already")
            conn.execute(
                "INSERT INTO agents (name, group_id, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (name, gid, token_hash, now()),
            )

    def list_agents(self) -> list[AgentInfo]:
        rows = self._query(
            "SELECT a.name, g.name AS grp, a.created_at, a.last_used_at, a.revoked_at"
            " FROM agents a JOIN groups g ON g.id = a.group_id ORDER BY g.name, a.name"
        )
        return [AgentInfo(r["name"], r["grp"], r["created_at"], r["last_used_at"], r["revoked_at"]) for r in rows]

    def revoke_agent(self, name: str) -> None:
        with self._write() as conn:
            cur = conn.execute("UPDATE agents SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now(), name))
            if cur.rowcount == 0:
                if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone():
                    raise ConflictError(f"agent {name!r} is already revoked")
                raise NotFoundError(f"no agent named {name!r} (see `credgate agent list`)")

    def agent_by_token_hash(self, token_hash: str) -> tuple[str, str, str] | None:
        """(agent, group, stored hash) of a live agent with this token hash, or None."""
        rows = self._query(
            "SELECT a.name, g.name AS grp, a.token_hash FROM agents a JOIN groups g ON g.id = a.group_id"
            " WHERE a.token_hash = ? AND a.revoked_at IS NULL",
            (token_hash,),
        )
        return (rows[0]["name"], rows[0]["grp"], rows[0]["token_hash"]) if rows else None

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
