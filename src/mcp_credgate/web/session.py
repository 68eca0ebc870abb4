"""Admin access to the dashboard: one admin secret, signed session cookies and CSRF tokens.

The admin secret (`cga_` + 256 random bits) is shown once, by `credgate init` or `credgate admin token`;
only its SHA-256 is stored. A session is a signed cookie (`HttpOnly`, `SameSite=Strict`): its key is
derived from the master key and the admin secret's hash, so a new admin secret or a master key rotation
ends every session at once, on every process sharing the store. A form's CSRF token is the session's
HMAC under that key: nothing is kept server-side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..store import Store

SECRET_PREFIX = "cga_"
MAX_SECRET_LENGTH = 128
COOKIE_NAME = "credgate_session"
SESSION_SECONDS = 12 * 3600


def new_admin_secret(store: Store) -> str:
    """Create (or replace) the admin secret; returns it. It is never stored nor shown again."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    store.set_admin_secret_hash(_hash(secret))
    return secret


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Session:
    sid: str
    issued: int


class AdminSessions:
    def __init__(self, store: Store, max_age: int = SESSION_SECONDS) -> None:
        self.store = store
        self.max_age = max_age

    def _key(self) -> bytes | None:
        secret_hash = self.store.admin_secret_hash()
        if secret_hash is None:
            return None
        return hmac.new(self.store.derived_key("dashboard session"), secret_hash.encode(), hashlib.sha256).digest()

    def check_secret(self, given: str) -> bool:
        stored = self.store.admin_secret_hash()
        if stored is None or not given.startswith(SECRET_PREFIX) or len(given) > MAX_SECRET_LENGTH:
            return False
        return hmac.compare_digest(_hash(given), stored)

    def issue(self) -> str:
        key = self._key()
        assert key is not None, "no admin secret"
        body = f"v1.{secrets.token_urlsafe(18)}.{int(time.time())}"
        return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"

    def verify(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 200:
            return None
        body, _, signature = cookie.rpartition(".")
        parts = body.split(".")
        key = self._key()
        if key is None or len(parts) != 3 or parts[0] != "v1" or not parts[2].isdigit():
            return None
        expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        issued = int(parts[2])
        if not 0 <= time.time() - issued <= self.max_age:
            return None
        return Session(parts[1], issued)

    def csrf_token(self, session: Session) -> str:
        key = self._key()
        assert key is not None
        return _b64(hmac.new(key, f"csrf.{session.sid}".encode(), hashlib.sha256).digest())

    def check_csrf(self, session: Session, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())
