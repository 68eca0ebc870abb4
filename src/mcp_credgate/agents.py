"""Agent bearer tokens: `cgt_` + 256 random bits; only their SHA-256 is stored.

The prefix lets secret scanners recognise a leaked token. A plain hash suffices for tokens of this
entropy (no password-style stretching needed); the lookup is by hash, then `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from mcp.server.auth.provider import AccessToken

from .authorization import ACCESS_PREFIX, agent_access_token
from .store import Store

__all__ = [
    "MAX_TOKEN_LENGTH",
    "TOKEN_PREFIX",
    "TOUCH_EVERY_SECONDS",
    "AgentTokenVerifier",
    "create_agent",
    "new_token",
    "token_hash",
]

TOKEN_PREFIX = "cgt_"
MAX_TOKEN_LENGTH = 128
TOUCH_EVERY_SECONDS = 60.0


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_agent(store: Store, group: str, name: str, user: str | None = None) -> str:
    """Create an agent in `group` (acting for `user`); returns its token, which is never stored nor shown again."""
    token = new_token()
    store.add_agent(group, name, token_hash(token), user)
    return token


class AgentTokenVerifier:
    """The SDK's `TokenVerifier`: a live agent's token → AccessToken(client_id=agent, claims={"group": …,
    "user": … or None}). The token is a static `cgt_` one, or an OAuth access token of a client's sign-in
    (`authorization`), whose agent is the grant.

    Checked against the store on every request, so a revocation (or the agent's user leaving its group) takes
    effect at the next request.
    """

    def __init__(self, store: Store, resource: str | None = None) -> None:
        self._store = store
        self._resource = resource  # this server's, when it signs clients in: OAuth access tokens bound to it count
        self._touched: dict[str, float] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        if token.startswith(ACCESS_PREFIX) and self._resource is not None:
            granted = agent_access_token(self._store, token, self._resource)
            if granted is not None:
                self._touch(granted.client_id)
            return granted
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = token_hash(token)
        found = self._store.agent_by_token_hash(digest)
        if found is None or not hmac.compare_digest(found.token_hash, digest):
            return None
        self._touch(found.name)
        return AccessToken(
            token=digest,
            client_id=found.name,
            scopes=[],
            subject=found.name,
            claims={"group": found.group, "user": found.user},
        )

    def _touch(self, agent: str) -> None:
        """Record last use at most once a minute per agent: a write per request would cost more than the call."""
        now = time.monotonic()
        if now - self._touched.get(agent, float("-inf")) >= TOUCH_EVERY_SECONDS:
            self._touched[agent] = now
            try:
                self._store.touch_agent(agent)
            except Exception:  # a busy store must not fail the request; the next touch will do
                self._touched.pop(agent, None)
