"""Access to the dashboard: the admin secret and users' sign-in secrets, signed session cookies, CSRF tokens.

The admin secret (`cga_` + 256 random bits) is shown once, by `credgate init` or `credgate admin token`, and signs
in the built-in admin; a user's (`cgu_`, contract §5) by `credgate user add` or `user secret`. Only their SHA-256
is stored. A session is a signed cookie (`HttpOnly`, `SameSite=Strict`): `v1.SID.ISSUED.SIG` for the admin
secret, `u1.USER.SID.ISSUED.SIG` for a user. Its key is derived from the master key and the hash of the secret
that signed it in, so a new secret, the user's removal or a master key rotation ends its sessions, on every
process sharing the store. Whether a user is an admin is read from the store at each request, never from the
cookie. A form's CSRF token is the session's HMAC under that key: nothing is kept server-side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..people import USER_SECRET_PREFIX, user_secret_hash
from ..store import BUILT_IN_ADMIN, Store

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
    user: str = BUILT_IN_ADMIN  # who signed in (the admin secret signs in the built-in admin)
    admin: bool = True  # read from the store at each request
    by_admin_secret: bool = True


@dataclass(frozen=True)
class SignIn:
    """Who a secret signs in: the admin secret's built-in admin, or a user."""

    user: str
    by_admin_secret: bool


class Sessions:
    def __init__(self, store: Store, max_age: int = SESSION_SECONDS) -> None:
        self.store = store
        self.max_age = max_age

    def _key(self, who: SignIn) -> bytes | None:
        """The signing key of `who`'s sessions: from the hash of the secret that signs them in (None: none)."""
        if who.by_admin_secret:
            secret_hash = self.store.admin_secret_hash()
            material = secret_hash
        else:
            found = self.store.user_secret_hash(who.user)
            secret_hash = found
            material = f"user|{who.user}|{found}"
        if secret_hash is None or material is None:
            return None
        return hmac.new(self.store.derived_key("dashboard session"), material.encode(), hashlib.sha256).digest()

    def check_secret(self, given: str) -> SignIn | None:
        """Who `given` signs in, or None."""
        if len(given) > MAX_SECRET_LENGTH:
            return None
        if given.startswith(SECRET_PREFIX):
            stored = self.store.admin_secret_hash()
            if stored is not None and hmac.compare_digest(_hash(given), stored):
                return SignIn(BUILT_IN_ADMIN, by_admin_secret=True)
            return None
        if given.startswith(USER_SECRET_PREFIX):
            found = self.store.user_by_secret_hash(user_secret_hash(given))
            if found is not None and hmac.compare_digest(found[2], user_secret_hash(given)):
                return SignIn(found[0], by_admin_secret=False)
        return None

    def issue(self, who: SignIn | None = None) -> str:
        who = who or SignIn(BUILT_IN_ADMIN, by_admin_secret=True)
        key = self._key(who)
        assert key is not None, "no secret"
        head = "v1" if who.by_admin_secret else f"u1.{who.user}"
        body = f"{head}.{secrets.token_urlsafe(18)}.{int(time.time())}"
        return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"

    def verify(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 300:
            return None
        body, _, signature = cookie.rpartition(".")
        parts = body.split(".")
        if len(parts) == 3 and parts[0] == "v1":
            who, sid, issued_text = SignIn(BUILT_IN_ADMIN, by_admin_secret=True), parts[1], parts[2]
        elif len(parts) == 4 and parts[0] == "u1" and parts[1]:
            who, sid, issued_text = SignIn(parts[1], by_admin_secret=False), parts[2], parts[3]
        else:
            return None
        key = self._key(who) if issued_text.isdigit() else None
        if key is None:
            return None
        expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        issued = int(issued_text)
        if not 0 <= time.time() - issued <= self.max_age:
            return None
        admin = who.by_admin_secret or self.store.user_is_admin(who.user)
        return Session(sid, issued, who.user, admin, who.by_admin_secret)

    def csrf_token(self, session: Session) -> str:
        key = self._key(SignIn(session.user, session.by_admin_secret))
        assert key is not None
        return _b64(hmac.new(key, f"csrf.{session.sid}".encode(), hashlib.sha256).digest())

    def check_csrf(self, session: Session, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())
