"""Access to the dashboard: the admin secret and users' sign-in secrets, signed session cookies, CSRF tokens.

The admin secret (`cga_` + 256 random bits) is shown once, by `credgate init` or `credgate admin token`, and signs
in the built-in admin; a user's (`cgu_`, contract §5) by `credgate user add` or `user secret`. Only their SHA-256
is stored. A session is a signed cookie (`HttpOnly`, `SameSite=Strict`): `v1.SID.ISSUED.SIG` for the admin
secret, `u1.USER.SID.ISSUED.SIG` for a user. Its key is derived from the master key and the hash of the secret
that signed it in, so a new secret, the user's removal or a master key rotation ends its sessions, on every
process sharing the store. Whether a user is an admin is read from the store at each request, never from the
cookie. A form's CSRF token is the session's HMAC under that key: nothing is kept server-side.

A sign-in through the organisation's OpenID provider (issue 23) has no secret of ours: its session,
`o1.USER.SID.ISSUED.SIG`, is keyed by the user's link to the provider instead (the user's row id, the issuer
and the subject). Unlinking the account, removing the user (a name added again is another row), or serving
without SSO or with another issuer ends those sessions; so does a master key rotation. A user's sign-in secret
and SSO sessions are apart: a new secret ends the former's sessions only.

The sign-in through the provider itself is kept, between the redirect there and the answer, in a sealed cookie
(`seal_flow`): AES-GCM under a key derived from the master key, so the answer may reach any replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from ..crypto import DataKey, OpenError
from ..people import USER_SECRET_PREFIX, user_secret_hash
from ..sso import Flow
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
    by_sso: bool = False  # signed in through the organisation's OpenID provider
    by_link: bool = False  # no sign-in: a setup link's page, which the link alone opens (over stdio)


@dataclass(frozen=True)
class SignIn:
    """Who a secret signs in: the admin secret's built-in admin, or a user; or a user the provider signed in."""

    user: str
    by_admin_secret: bool
    by_sso: bool = False


class Sessions:
    """`sso_issuer`: the provider whose sign-ins are accepted (None: SSO is off, and its sessions end)."""

    def __init__(self, store: Store, max_age: int = SESSION_SECONDS, sso_issuer: str | None = None) -> None:
        self.store = store
        self.max_age = max_age
        self.sso_issuer = sso_issuer

    def _key(self, who: SignIn) -> bytes | None:
        """The signing key of `who`'s sessions: from the hash of the secret that signs them in, or from the
        user's link to the provider (None: none)."""
        if who.by_sso:
            link = self.store.sso_link(who.user)
            if link is None or self.sso_issuer is None or link.issuer != self.sso_issuer:
                return None
            linked = f"sso|{who.user}|{link.user_id}|{link.issuer}|{link.subject}"
            return hmac.new(self.store.derived_key("dashboard session"), linked.encode(), hashlib.sha256).digest()
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
        head = "v1" if who.by_admin_secret else f"{'o1' if who.by_sso else 'u1'}.{who.user}"
        body = f"{head}.{secrets.token_urlsafe(18)}.{int(time.time())}"
        return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"

    def verify(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 300:
            return None
        body, _, signature = cookie.rpartition(".")
        parts = body.split(".")
        if len(parts) == 3 and parts[0] == "v1":
            who, sid, issued_text = SignIn(BUILT_IN_ADMIN, by_admin_secret=True), parts[1], parts[2]
        elif len(parts) == 4 and parts[0] in ("u1", "o1") and parts[1]:
            who = SignIn(parts[1], by_admin_secret=False, by_sso=parts[0] == "o1")
            sid, issued_text = parts[2], parts[3]
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
        return Session(sid, issued, who.user, admin, who.by_admin_secret, who.by_sso)

    def csrf_token(self, session: Session) -> str:
        key = self._key(SignIn(session.user, session.by_admin_secret, session.by_sso))
        assert key is not None
        return _b64(hmac.new(key, f"csrf.{session.sid}".encode(), hashlib.sha256).digest())

    def check_csrf(self, session: Session, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())


# -- a sign-in through the provider, between the redirect there and its answer --------------------------


def _flow_key(store: Store) -> DataKey:
    return DataKey(store.derived_key("sso sign-in flow"))


def seal_flow(store: Store, flow: Flow) -> str:
    """The flow as a cookie value only this installation opens (state, nonce and PKCE verifier stay secret)."""
    plain = json.dumps([flow.state, flow.nonce, flow.verifier, flow.next_path, flow.started])
    return _b64(_flow_key(store).encrypt("sso", "flow v1", plain))


def open_flow(store: Store, sealed: str | None) -> Flow | None:
    """The flow a cookie holds, or None (no cookie, altered, or sealed under another master key)."""
    if not sealed or len(sealed) > 4096:
        return None
    try:
        blob = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        state, nonce, verifier, next_path, started = json.loads(_flow_key(store).decrypt("sso", "flow v1", blob))
        return Flow(str(state), str(nonce), str(verifier), str(next_path), float(started))
    except (OpenError, ValueError, TypeError):
        return None
