"""Setup links (contract §7): one call's missing credential, fixed at a page whose link is single use and
expires in minutes. Kept by the link's SHA-256 only (the link is the key to the page over stdio); the
elicitation id is the public name the client knows it by. A link dies with its group or its user."""

from __future__ import annotations

from dataclasses import dataclass

from .base import StoreBase, now

MAX_LINKS_PER_SETUP = 50


@dataclass(frozen=True)
class SetupLinkRecord:
    elicitation_id: str
    group: str
    tool: str
    user: str | None  # a personal tool's: whose credential the page sets up
    expires_at: float
    used: bool


class SetupLinks(StoreBase):
    def add_setup_link(
        self, link_hash: str, elicitation_id: str, group: str, tool: str, user: str | None, expires_at: float
    ) -> None:
        """A link to set up `tool` for `group` (for `user`, a personal tool); links expired an hour before this
        one's expiry are forgotten on the way, and of one (group, tool, user)'s links only the newest
        `MAX_LINKS_PER_SETUP` are kept (an agent calling in a loop fills no table)."""
        with self._write(changes_setup=False) as conn:
            gid = self._group_id(conn, group)
            uid = self._user_id(conn, user) if user is not None else None
            conn.execute("DELETE FROM setup_links WHERE expires_at < ?", (expires_at - 3600,))
            conn.execute(
                "INSERT INTO setup_links (link_hash, elicitation_id, group_id, tool, user_id, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (link_hash, elicitation_id, gid, tool, uid, expires_at),
            )
            whose = "user_id = ?" if uid is not None else "user_id IS NULL"
            conn.execute(
                "DELETE FROM setup_links WHERE link_hash IN (SELECT link_hash FROM setup_links"
                f" WHERE group_id = ? AND tool = ? AND {whose} ORDER BY expires_at DESC LIMIT 1000000 OFFSET ?)",
                (gid, tool, *([uid] if uid is not None else []), MAX_LINKS_PER_SETUP),
            )

    def setup_link(self, link_hash: str) -> SetupLinkRecord | None:
        rows = self._query(
            "SELECT l.elicitation_id, (SELECT g.name FROM groups g WHERE g.id = l.group_id) AS grp, l.tool,"
            " (SELECT u.name FROM users u WHERE u.id = l.user_id) AS usr, l.expires_at, l.used_at"
            " FROM setup_links l WHERE l.link_hash = ?",
            (link_hash,),
        )
        if not rows:
            return None
        r = rows[0]
        return SetupLinkRecord(
            r["elicitation_id"], r["grp"], r["tool"], r["usr"], float(r["expires_at"]), r["used_at"] is not None
        )

    def use_setup_link(self, link_hash: str, at: float) -> bool:
        """Mark the link used, if it was neither used nor expired at `at`: True for the one caller that did."""
        with self._write(changes_setup=False) as conn:
            cur = conn.execute(
                "UPDATE setup_links SET used_at = ? WHERE link_hash = ? AND used_at IS NULL AND expires_at > ?",
                (now(), link_hash, at),
            )
            return int(cur.rowcount) == 1
