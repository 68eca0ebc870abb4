"""Keep OAuth2 access tokens fresh at call time.

A token that expires within the margin is refreshed before the call uses it. One refresh per credential
runs at a time: in this process behind an anyio lock, across processes behind the store's credential lock.
Whoever waited reads the store again and finds the new token, so twenty concurrent calls make one refresh.
The new access token and a rotated refresh token are written in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import httpx2

from . import oauth
from .credential import Credential
from .declarations import CredentialSpec
from .errors import ConflictError, CredentialValueError, NotFoundError, StoreBusyError
from .readiness import REFRESH_MARGIN
from .redact import redactor_for
from .store import Store

__all__ = ["SAVE_ATTEMPTS", "TokenRefresher"]

logger = logging.getLogger("credgate.oauth")

SAVE_ATTEMPTS = 3


class TokenRefresher:
    def __init__(self, store: Store, http: Callable[[], httpx2.AsyncClient], margin: float = REFRESH_MARGIN) -> None:
        self.store = store
        self.http = http
        self.margin = margin
        self._locks: dict[str, anyio.Lock] = {}

    async def fresh(self, spec: CredentialSpec, credential: Credential) -> Credential:
        """The credential with a usable access token. Raises TokenExpired (connect again) or another
        OAuthError (transient: the stored tokens are untouched)."""
        state = oauth.condition(credential, oauth.utc_now(), self.margin)
        if state == "fresh":
            return credential
        if state == "expired":
            raise oauth.TokenExpired(f"the OAuth2 token of credential {credential.name!r} has expired")
        in_process = self._locks.setdefault(credential.uid, anyio.Lock())
        async with in_process, self.store.credential_lock(credential.uid):
            return await self._refresh_locked(spec, credential)

    async def _refresh_locked(self, spec: CredentialSpec, seen: Credential) -> Credential:
        provider = spec.oauth
        assert provider is not None
        try:
            current = self.store.read_credential(seen.name)
        except NotFoundError:
            current = None
        if current is None or current.uid != seen.uid:
            raise oauth.OAuthError(f"credential {seen.name!r} was removed or replaced during the call; retry")
        state = oauth.condition(current, oauth.utc_now(), self.margin)
        if state == "fresh" or current.get(provider.field) != seen.get(provider.field):
            return current  # another call or process refreshed it while this one waited
        if state == "expired":
            raise oauth.TokenExpired(f"the OAuth2 token of credential {seen.name!r} has expired")
        # Once the request is sent, the provider may have rotated the refresh token: the answer must reach
        # the store even if the call that asked is cancelled meanwhile (the request has its own deadline).
        with anyio.CancelScope(shield=True):
            refreshed = await self._refresh_and_save(spec, current)
        return refreshed

    async def _refresh_and_save(self, spec: CredentialSpec, current: Credential) -> Credential:
        provider = spec.oauth
        assert provider is not None
        name = current.name
        try:
            values, drop = await oauth.refresh(self.http(), provider, current)
        except oauth.GrantRefused as exc:
            # the provider's error code is its own text: one that repeats a token must not reach the log
            error = redactor_for(current).text(exc.error)
            logger.warning("refresh of credential %s refused by the token endpoint: %s", name, error)
            if exc.error != "invalid_grant":
                raise
            self._save(spec, current, {"refresh_error": f"invalid_grant ({oauth.iso(oauth.utc_now())})"}, [])
            raise oauth.TokenExpired(f"the refresh token of credential {name!r} was refused (invalid_grant)") from None
        except oauth.TokenEndpointUnavailable as exc:
            logger.warning("refresh of credential %s failed: %s", name, exc)
            self._keep_rotated(spec, current, exc.refresh_token)  # an unfit answer may still have rotated it
            raise
        except oauth.OAuthError as exc:
            logger.warning("refresh of credential %s failed: %s", name, exc)
            raise
        try:
            clean = spec.validate_values(values, complete=False, managed=True)
        except CredentialValueError as exc:
            self._keep_rotated(spec, current, values.get("refresh_token"))
            raise oauth.TokenEndpointUnavailable(f"the token endpoint's answer is unfit to store: {exc}") from None
        self._save(spec, current, clean, drop)
        logger.info("refreshed the OAuth2 token of credential %s", name)
        return self.store.read_credential(name)

    def _keep_rotated(self, spec: CredentialSpec, current: Credential, refresh_token: str | None) -> None:
        """A new refresh token exists nowhere else once the provider has rotated it: store it on its own."""
        if not refresh_token or refresh_token == current.get("refresh_token"):
            return
        try:
            clean = spec.validate_values({"refresh_token": refresh_token}, complete=False, managed=True)
        except CredentialValueError:
            return  # unfit itself (CR, LF…): nothing to keep
        self._save(spec, current, clean, [])

    def _save(self, spec: CredentialSpec, current: Credential, values: dict[str, str], drop: list[str]) -> None:
        """Store checked values; a busy store is tried again rather than losing a rotated refresh token."""
        for attempt in range(SAVE_ATTEMPTS):
            try:
                self.store.update_credential(current.name, values, spec.secret_fields, remove=drop, uid=current.uid)
                return
            except (ConflictError, NotFoundError):
                raise oauth.OAuthError(
                    f"credential {current.name!r} was removed or replaced during the call; retry"
                ) from None
            except StoreBusyError:
                if attempt == SAVE_ATTEMPTS - 1:
                    logger.error("the refreshed tokens of credential %s could not be stored: busy", current.name)
                    raise
