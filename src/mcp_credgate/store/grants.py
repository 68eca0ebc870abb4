"""OAuth sign-ins of remote clients (contract §6): the clients, authorization codes and tokens, kept as hashes.

A grant is one sign-in: a client, acting for a user in one of their groups. It is an agent of kind `oauth`, so
everything that ends an agent ends it (`agent revoke`, removing the user or their membership), and its tokens
are found through it: a token of a revoked agent, or of a user who left the group, is found no more. Codes and
tokens are stored by their SHA-256 only; the plain values exist in the answer that hands them out.

Refresh tokens rotate: each is used once. A used one presented again means two parties hold it (RFC 9700
§4.14.2): the grant is revoked, with every token it issued. A code presented again does the same to the grant
made from it (RFC 6749 §4.1.2).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConflictError
from .base import StoreBase, now
from .database import Database

OAUTH_AGENT_MARKER = "oauth:"  # the token_hash of a grant's agent: no hex digest starts so (see migration 0010)


@dataclass(frozen=True)
class OAuthClientRecord:
    """A client as the store knows it: its metadata (JSON, public) and when it was registered and last used."""

    client_id: str
    kind: str  # 'registered' (RFC 7591) or 'document' (its client_id is the URL of its metadata document)
    metadata: str
    registered_at: str
    fetched_at: float | None
    used_at: str | None


@dataclass(frozen=True)
class OAuthCode:
    client_id: str
    user: str
    group: str
    redirect_uri: str
    redirect_explicit: bool
    code_challenge: str
    resource: str
    scopes: tuple[str, ...]
    expires_at: float
    redeemed: bool


@dataclass(frozen=True)
class OAuthToken:
    """An access or refresh token found by its hash, with the live grant (agent) it belongs to."""

    agent: str
    group: str
    user: str | None
    client_id: str
    resource: str
    scopes: tuple[str, ...]
    expires_at: float
    used: bool


@dataclass(frozen=True)
class IssuedTokens:
    """The hashes and expiries of an access token and a refresh token to store."""

    access_hash: str
    access_expires_at: float
    refresh_hash: str
    refresh_expires_at: float


class RefreshReused(ConflictError):
    """A refresh token was presented after it had been used: its grant is revoked."""


_TOKEN_COLUMNS = (
    "a.name, (SELECT g.name FROM groups g WHERE g.id = a.group_id) AS grp,"
    " (SELECT u.name FROM users u WHERE u.id = a.user_id) AS usr, a.client_id,"
    " t.resource, t.scopes, t.expires_at, t.used_at"
)
_LIVE_GRANT = (
    "a.revoked_at IS NULL AND a.kind = 'oauth'"
    " AND EXISTS (SELECT 1 FROM members m WHERE m.group_id = a.group_id AND m.user_id = a.user_id)"
)


class Grants(StoreBase):
    """OAuth clients, codes, tokens; a grant's agent."""

    # -- clients ---------------------------------------------------------------------------

    def save_oauth_client(self, client_id: str, kind: str, metadata: str, fetched_at: float | None = None) -> None:
        """Register a client, or refresh a metadata document's copy (its registration time is kept)."""
        with self._write(changes_setup=False) as conn:
            conn.execute(
                "INSERT INTO oauth_clients (client_id, kind, metadata, registered_at, fetched_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE"
                " SET metadata = excluded.metadata, fetched_at = excluded.fetched_at",
                (client_id, kind, metadata, now(), fetched_at),
            )

    def oauth_client(self, client_id: str) -> OAuthClientRecord | None:
        rows = self._query(
            "SELECT client_id, kind, metadata, registered_at, fetched_at, used_at FROM oauth_clients"
            " WHERE client_id = ?",
            (client_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return OAuthClientRecord(
            r["client_id"], r["kind"], r["metadata"], r["registered_at"], r["fetched_at"], r["used_at"]
        )

    def forget_unused_oauth_clients(self, registered_before: str, kind: str = "registered") -> int:
        """Remove clients of `kind` that never completed a sign-in and were registered (a document: first
        fetched) before the time given (an ISO timestamp, as `now()` writes them). Returns how many."""
        with self._write(changes_setup=False) as conn:
            cur = conn.execute(
                "DELETE FROM oauth_clients WHERE kind = ? AND used_at IS NULL AND registered_at < ?",
                (kind, registered_before),
            )
            return int(cur.rowcount)

    def unused_oauth_client_count(self, kind: str = "registered") -> int:
        rows = self._query("SELECT COUNT(*) AS n FROM oauth_clients WHERE kind = ? AND used_at IS NULL", (kind,))
        return int(rows[0]["n"])

    # -- codes -----------------------------------------------------------------------------

    def add_oauth_code(
        self,
        code_hash: str,
        *,
        client_id: str,
        user: str,
        group: str,
        redirect_uri: str,
        redirect_explicit: bool,
        code_challenge: str,
        resource: str,
        scopes: Sequence[str],
        expires_at: float,
    ) -> None:
        """A code for `client_id` to act for `user` (a member of `group`) in `group`."""
        with self._write(changes_setup=False) as conn:
            gid, uid = self._group_id(conn, group), self._user_id(conn, user)
            self._require_member(conn, gid, uid, group, user)
            conn.execute("DELETE FROM oauth_codes WHERE expires_at < ? AND agent_id IS NULL", (expires_at - 3600,))
            conn.execute(
                "INSERT INTO oauth_codes (code_hash, client_id, user_id, group_id, redirect_uri, redirect_explicit,"
                " code_challenge, resource, scopes, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    code_hash,
                    client_id,
                    uid,
                    gid,
                    redirect_uri,
                    int(redirect_explicit),
                    code_challenge,
                    resource,
                    json.dumps(list(scopes)),
                    expires_at,
                ),
            )

    def oauth_code(self, code_hash: str) -> OAuthCode | None:
        rows = self._query(
            "SELECT c.client_id, (SELECT u.name FROM users u WHERE u.id = c.user_id) AS usr,"
            " (SELECT g.name FROM groups g WHERE g.id = c.group_id) AS grp, c.redirect_uri, c.redirect_explicit,"
            " c.code_challenge, c.resource, c.scopes, c.expires_at, c.agent_id FROM oauth_codes c"
            " WHERE c.code_hash = ?",
            (code_hash,),
        )
        if not rows:
            return None
        r = rows[0]
        return OAuthCode(
            r["client_id"],
            r["usr"],
            r["grp"],
            r["redirect_uri"],
            bool(r["redirect_explicit"]),
            r["code_challenge"],
            r["resource"],
            tuple(json.loads(r["scopes"])),
            float(r["expires_at"]),
            r["agent_id"] is not None,
        )

    def redeem_oauth_code(self, code_hash: str, agent: str, tokens: IssuedTokens) -> None:
        """Make the grant of a code (an agent named `agent`) and its first tokens, in one transaction. A code
        already redeemed raises ConflictError (and nothing is written); so does a user no longer a member."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT client_id, user_id, group_id, resource, scopes, agent_id FROM oauth_codes WHERE code_hash = ?",
                (code_hash,),
            ).fetchone()
            if row is None or row["agent_id"] is not None:
                raise ConflictError("authorization code already used")
            if not conn.execute(
                "SELECT 1 FROM members WHERE group_id = ? AND user_id = ?", (row["group_id"], row["user_id"])
            ).fetchone():
                raise ConflictError("the user is no longer a member of the group")
            if conn.execute("SELECT 1 FROM agents WHERE name = ?", (agent,)).fetchone():
                raise ConflictError(f"an agent named {agent!r} exists already")
            conn.execute(
                "INSERT INTO agents (name, group_id, token_hash, created_at, user_id, kind, client_id)"
                " VALUES (?, ?, ?, ?, ?, 'oauth', ?)",
                (
                    agent,
                    row["group_id"],
                    OAUTH_AGENT_MARKER + secrets.token_hex(16),
                    now(),
                    row["user_id"],
                    row["client_id"],
                ),
            )
            agent_id = conn.execute("SELECT id FROM agents WHERE name = ?", (agent,)).fetchone()["id"]
            conn.execute("UPDATE oauth_codes SET agent_id = ? WHERE code_hash = ?", (agent_id, code_hash))
            conn.execute("UPDATE oauth_clients SET used_at = ? WHERE client_id = ?", (now(), row["client_id"]))
            _insert_tokens(conn, agent_id, row["resource"], row["scopes"], tokens)

    def revoke_grant_of_code(self, code_hash: str) -> str | None:
        """A redeemed code presented again: revoke the grant made from it. Returns the agent's name, if any."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT a.name FROM oauth_codes c JOIN agents a ON a.id = c.agent_id WHERE c.code_hash = ?",
                (code_hash,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE agents SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now(), row["name"]))
            return str(row["name"])

    # -- tokens ----------------------------------------------------------------------------

    def oauth_token(self, token_hash: str, kind: str) -> OAuthToken | None:
        """The token of this hash and kind ('access' or 'refresh') whose grant is live, or None."""
        rows = self._query(
            f"SELECT {_TOKEN_COLUMNS} FROM oauth_tokens t JOIN agents a ON a.id = t.agent_id"
            f" WHERE t.token_hash = ? AND t.kind = ? AND {_LIVE_GRANT}",
            (token_hash, kind),
        )
        if not rows:
            return None
        r = rows[0]
        return OAuthToken(
            r["name"],
            r["grp"],
            r["usr"],
            r["client_id"],
            r["resource"],
            tuple(json.loads(r["scopes"])),
            float(r["expires_at"]),
            r["used_at"] is not None,
        )

    def rotate_oauth_refresh(self, refresh_hash: str, tokens: IssuedTokens) -> None:
        """Use a refresh token once: mark it used and store its successors, in one transaction. Used before (or
        by a concurrent request that won): the grant is revoked and `RefreshReused` raised."""
        with self._write(changes_setup=False) as conn:
            row = conn.execute(
                "SELECT t.agent_id, t.resource, t.scopes FROM oauth_tokens t JOIN agents a ON a.id = t.agent_id"
                f" WHERE t.token_hash = ? AND t.kind = 'refresh' AND {_LIVE_GRANT}",
                (refresh_hash,),
            ).fetchone()
            if row is None:
                raise ConflictError("refresh token not found")
            cur = conn.execute(
                "UPDATE oauth_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL", (now(), refresh_hash)
            )
            reused = cur.rowcount != 1
            if reused:  # committed before it is said: raising here would roll the revocation back
                self._revoke_grant(conn, int(row["agent_id"]))
            else:
                _insert_tokens(conn, int(row["agent_id"]), row["resource"], row["scopes"], tokens)
                conn.execute("DELETE FROM oauth_tokens WHERE expires_at < ?", (tokens.access_expires_at - 2 * 86400,))
        if reused:
            raise RefreshReused("refresh token used twice: the grant is revoked")

    def revoke_grant_of_token(self, token_hash: str) -> str | None:
        """Revoke the grant a token (of either kind, used or not) belongs to. Returns its agent's name, if any."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT a.id, a.name FROM oauth_tokens t JOIN agents a ON a.id = t.agent_id WHERE t.token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                return None
            self._revoke_grant(conn, int(row["id"]))
            return str(row["name"])

    def refresh_token_reused(self, token_hash: str) -> bool:
        """Whether this refresh token was used already (whatever its grant's state)."""
        rows = self._query(
            "SELECT 1 FROM oauth_tokens WHERE token_hash = ? AND kind = 'refresh' AND used_at IS NOT NULL",
            (token_hash,),
        )
        return bool(rows)

    @staticmethod
    def _revoke_grant(conn: Database, agent_id: int) -> None:
        conn.execute("UPDATE agents SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now(), agent_id))


def _insert_tokens(conn: Database, agent_id: int, resource: str, scopes: str, tokens: IssuedTokens) -> None:
    for kind, token_hash, expires_at in (
        ("access", tokens.access_hash, tokens.access_expires_at),
        ("refresh", tokens.refresh_hash, tokens.refresh_expires_at),
    ):
        conn.execute(
            "INSERT INTO oauth_tokens (token_hash, kind, agent_id, resource, scopes, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token_hash, kind, agent_id, resource, scopes, expires_at),
        )
