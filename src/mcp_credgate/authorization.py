"""credgate as the OAuth 2.1 authorization server of the MCP authorization spec (contract §6).

The HTTP side is the SDK's (`mcp.server.auth`: its handlers parse and answer /authorize, /token, /register and
/revoke, check PKCE S256 and the redirect URI); this is the provider behind them, over the store:

- **Clients** register (RFC 7591; `--registration loopback|open|off`) or are known by their Client ID Metadata
  Document (a `client_id` that is the https URL of their metadata, fetched by `client_documents`). Every client
  is public: PKCE is its proof, and no client secret is kept to leak.
- **Authorize**: the request (client, redirect URI, PKCE challenge, state, resource) is signed into the URL of
  the consent page, which the user reaches signed in; they choose one of their groups, and get a code (5
  minutes, single use) sent back with `state` and `iss` (RFC 9207).
- **Tokens** are opaque: `cgo_` access tokens (one hour) and `cgr_` refresh tokens (30 days, rotating, reuse
  revokes the grant), stored hashed and bound to this server's resource (RFC 8707), checked on every request.
A grant is an agent of kind `oauth` (`store.grants`): `credgate agent revoke` ends it at its next request.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    IdentityAssertionParams,
    RefreshToken,
    RegistrationError,
    TokenError,
    construct_redirect_uri,
)
from mcp.shared.auth import InvalidRedirectUriError, OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl

from .client_documents import ClientDocumentError, fetch_client_document, is_client_document_url
from .errors import ConflictError
from .loopback import is_loopback_host
from .sealing import seal, unseal
from .store import IssuedTokens, RefreshReused, Store

__all__ = [
    "ACCESS_PREFIX",
    "ACCESS_SECONDS",
    "CODE_SECONDS",
    "DOCUMENT_FRESH_SECONDS",
    "DOCUMENT_STALE_SECONDS",
    "MAX_CLIENT_ID",
    "MAX_CLIENT_NAME",
    "MAX_STATE",
    "MAX_UNUSED_CLIENTS",
    "NEW_CLIENT_SECONDS",
    "REFRESH_PREFIX",
    "REFRESH_SECONDS",
    "REGISTRATION_MODES",
    "REQUEST_SECONDS",
    "UNUSED_CLIENT_SECONDS",
    "AuthorizationServer",
    "ClientView",
    "CodeRecord",
    "CredgateClient",
    "Registration",
    "SignInRequest",
    "agent_access_token",
    "is_loopback_redirect",
    "same_resource",
]

log = logging.getLogger("credgate.authorization")
_P = ParamSpec("_P")
_T = TypeVar("_T")

ACCESS_PREFIX = "cgo_"
REFRESH_PREFIX = "cgr_"
ACCESS_SECONDS = 3600
REFRESH_SECONDS = 30 * 86400
CODE_SECONDS = 300
REQUEST_SECONDS = 600  # between /authorize and the consent's answer
UNUSED_CLIENT_SECONDS = (
    86400  # a client (registered, or a document) that never completes a sign-in is forgotten after this
)
MAX_UNUSED_CLIENTS = 1000
DOCUMENT_FRESH_SECONDS = 3600  # a metadata document is fetched again after this
DOCUMENT_STALE_SECONDS = 86400  # ... and its last copy used while the fetch fails, up to this
MAX_CLIENT_ID = 2048
MAX_STATE = 1024
MAX_CLIENT_NAME = 64
NEW_CLIENT_SECONDS = 600  # "registered just now" on the consent page

Registration = Literal["loopback", "open", "off"]
REGISTRATION_MODES: tuple[Registration, ...] = ("loopback", "open", "off")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_resource(given: str, resource: str) -> bool:
    """Whether a resource indicator names this server's resource: as URLs (scheme and host in any case), a
    trailing slash aside."""

    def canonical(url: str) -> tuple[str, str, str]:
        parts = urlsplit(url.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")

    try:
        return canonical(given) == canonical(resource) and not urlsplit(given).query and "#" not in given
    except ValueError:
        return False


def is_loopback_redirect(uri: str) -> bool:
    """Whether a redirect URI is plain http to this machine's loopback (a native client's, RFC 8252 §7.3)."""
    parts = urlsplit(uri)
    return parts.scheme == "http" and is_loopback_host(parts.hostname or "")


class CredgateClient(OAuthClientInformationFull):
    """A client's record, with RFC 8252 §7.3's rule for loopback redirect URIs: any port matches (a native
    client listens on the port it gets); everything else matches exactly."""

    def validate_redirect_uri(self, redirect_uri: AnyUrl | None) -> AnyUrl:
        if redirect_uri is not None and self.redirect_uris and redirect_uri not in self.redirect_uris:
            asked = urlsplit(str(redirect_uri))
            if is_loopback_redirect(str(redirect_uri)):
                for registered in self.redirect_uris:
                    known = urlsplit(str(registered))
                    if is_loopback_redirect(str(registered)) and (
                        known.hostname,
                        known.path,
                        known.query,
                    ) == (asked.hostname, asked.path, asked.query):
                        return redirect_uri
            raise InvalidRedirectUriError("redirect_uri is not registered for this client")
        return super().validate_redirect_uri(redirect_uri)


@dataclass(frozen=True)
class SignInRequest:
    """An authorization request on its way through the consent page, signed so that nothing in it can be
    changed there (and so that any replica sharing the store can answer it)."""

    client_id: str
    redirect_uri: str
    redirect_explicit: bool
    code_challenge: str
    state: str | None
    resource: str
    scopes: tuple[str, ...]
    expires_at: float

    def seal(self, key: bytes) -> str:
        return seal(asdict(self), key)

    @classmethod
    def unseal(cls, sealed: str, key: bytes) -> SignInRequest | None:
        """The request, if `sealed` was signed with `key` and has not expired; else None."""
        fields = unseal(sealed, key)
        if fields is None:
            return None
        try:
            request = cls(**{**fields, "scopes": tuple(fields["scopes"])})
        except (ValueError, TypeError, KeyError):
            return None
        return request if request.expires_at > time.time() else None


@dataclass(frozen=True)
class ClientView:
    """What the consent page says about a client: its self-declared name, where the answer goes, and how new
    it is; for a metadata document, the host that serves it (the one thing about it that is proven)."""

    client_id: str
    name: str
    redirect_host: str
    new: bool
    document_host: str | None


class CodeRecord(AuthorizationCode):
    code_hash: str
    user: str
    group: str


class AuthorizationServer:
    """The SDK's `OAuthAuthorizationServerProvider` over the store, and the consent page's two answers.

    `issuer` is the public URL; the protected resource is `<issuer>/mcp`. `allow_loopback_documents`: a
    gateway bound to loopback may fetch metadata documents from loopback (its clients are local too).
    Store work runs in a worker thread: a write may wait for the database.
    """

    def __init__(
        self,
        store: Store,
        issuer: str,
        *,
        registration: Registration = "loopback",
        allow_loopback_documents: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.issuer_url = issuer.rstrip("/")
        self.issuer = self.issuer_url  # as the metadata says it (no slash added): RFC 9207's `iss` must be equal
        self.resource = f"{self.issuer_url}/mcp"
        self.consent_url = f"{self.issuer_url}/oauth/consent"
        self.registration = registration
        self.allow_loopback_documents = allow_loopback_documents
        self.clock = clock

    async def _run(self, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await anyio.to_thread.run_sync(lambda: work(*args, **kwargs))

    def _request_key(self) -> bytes:
        return self.store.derived_key("oauth sign-in request")

    # -- clients ---------------------------------------------------------------------------

    async def get_client(self, client_id: str) -> CredgateClient | None:
        if not client_id or len(client_id) > MAX_CLIENT_ID:
            return None
        if is_client_document_url(client_id, allow_loopback=self.allow_loopback_documents):
            return await self._document_client(client_id)
        return await self._run(self.known_client, client_id)

    def known_client(self, client_id: str) -> CredgateClient | None:
        """A client as the store knows it (registered, or its metadata document as last fetched)."""
        record = self.store.oauth_client(client_id)
        return CredgateClient.model_validate_json(record.metadata) if record is not None else None

    async def _document_client(self, url: str) -> CredgateClient | None:
        record = await self._run(self.store.oauth_client, url)
        if record is None and not await self._run(self._room_for, "document"):
            log.warning("client metadata document not fetched: too many documents of clients not yet used")
            return None
        age = self.clock() - record.fetched_at if record is not None and record.fetched_at is not None else None
        if record is not None and age is not None and age < DOCUMENT_FRESH_SECONDS:
            return CredgateClient.model_validate_json(record.metadata)
        try:
            document = await fetch_client_document(url, allow_loopback=self.allow_loopback_documents)
        except ClientDocumentError as exc:
            log.warning("client metadata document refused: %s", exc)
            if record is not None and age is not None and age < DOCUMENT_STALE_SECONDS:
                return CredgateClient.model_validate_json(record.metadata)
            return None
        client = CredgateClient(
            client_id=url,
            client_name=document.client_name,
            client_uri=document.client_uri,  # type: ignore[arg-type]  # validated by pydantic
            redirect_uris=[AnyUrl(u) for u in document.redirect_uris],
            grant_types=list(document.grant_types),
            response_types=list(document.response_types),
            token_endpoint_auth_method="none",
            scope=document.scope,
        )
        await self._run(self.store.save_oauth_client, url, "document", client.model_dump_json(), self.clock())
        return client

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        """RFC 7591, through the SDK's handler (which made the client_id). Every client is made public (the
        handler's client secret is dropped: the answer says `none`); loopback-only unless `open`."""
        uris = [str(u) for u in client_info.redirect_uris or []]
        for uri in uris:
            loopback = is_loopback_redirect(uri)
            if self.registration == "loopback" and not loopback:
                raise RegistrationError(
                    "invalid_redirect_uri",
                    "this server registers only clients whose redirect URIs are loopback (http://127.0.0.1:PORT/…);"
                    " an admin can allow others with `credgate serve --http --registration open`",
                )
            scheme = urlsplit(uri).scheme.lower()
            if not loopback and (scheme == "http" or scheme in ("javascript", "data", "file", "vbscript")):
                raise RegistrationError(
                    "invalid_redirect_uri", "a redirect URI must be https, loopback http or an app's"
                )
        client_info.client_secret = None
        client_info.client_secret_expires_at = None
        client_info.token_endpoint_auth_method = "none"
        if client_info.client_name:
            client_info.client_name = _printable(client_info.client_name)[:200]
        await self._run(self._save_registration, client_info)

    def _save_registration(self, client_info: OAuthClientInformationFull) -> None:
        if not self._room_for("registered"):
            raise RegistrationError(
                "invalid_client_metadata", "too many clients registered and not yet used: try again later"
            )
        self.store.save_oauth_client(client_info.client_id, "registered", client_info.model_dump_json())

    def _room_for(self, kind: str) -> bool:
        """Whether another client of `kind` may be kept, once those unused for a day are forgotten: anyone can
        make one (a registration; a document, by naming its URL), so at most MAX_UNUSED_CLIENTS wait unused."""
        cutoff = datetime.now(UTC) - timedelta(seconds=UNUSED_CLIENT_SECONDS)
        self.store.forget_unused_oauth_clients(cutoff.isoformat(timespec="milliseconds"), kind)
        return self.store.unused_oauth_client_count(kind) < MAX_UNUSED_CLIENTS

    def client_view(self, client: OAuthClientInformationFull, redirect_uri: str) -> ClientView:
        record = self.store.oauth_client(client.client_id)
        new = False
        if record is not None and record.kind == "registered" and record.used_at is None:
            registered = datetime.fromisoformat(record.registered_at)
            new = (datetime.now(UTC) - registered).total_seconds() < NEW_CLIENT_SECONDS
        document = urlsplit(client.client_id).netloc if record is not None and record.kind == "document" else None
        return ClientView(
            client_id=client.client_id,
            name=_printable(client.client_name or "")[:200] or "(no name given)",
            redirect_host=urlsplit(redirect_uri).netloc,
            new=new,
            document_host=document,
        )

    # -- authorization ---------------------------------------------------------------------

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        """Checked by the SDK's handler already: the client, its redirect URI, PKCE's challenge. Here: the
        resource (RFC 8707: this server's, or none, which means it), then the consent page."""
        resource = params.resource or self.resource
        if not same_resource(resource, self.resource):
            raise AuthorizeError("invalid_target", f"this server's resource is {self.resource}")
        if params.state is not None and len(params.state) > MAX_STATE:
            raise AuthorizeError("invalid_request", f"state is longer than {MAX_STATE} characters")
        request = SignInRequest(
            client_id=client.client_id,
            redirect_uri=str(params.redirect_uri),
            redirect_explicit=params.redirect_uri_provided_explicitly,
            code_challenge=params.code_challenge,
            state=params.state,
            resource=self.resource,
            scopes=tuple(params.scopes or ()),
            expires_at=self.clock() + REQUEST_SECONDS,
        )
        sealed = await self._run(lambda: request.seal(self._request_key()))
        return f"{self.consent_url}?request={sealed}"

    def sign_in_request(self, sealed: str) -> SignInRequest | None:
        """The consent page's request, if it is genuine and not expired."""
        return SignInRequest.unseal(sealed, self._request_key()) if len(sealed) < 8192 else None

    def approve(self, request: SignInRequest, user: str, group: str) -> str:
        """The user lets the client act for them in `group` (one of theirs): a code, and the URL that takes it
        back to the client."""
        code = secrets.token_urlsafe(32)
        self.store.add_oauth_code(
            _digest(code),
            client_id=request.client_id,
            user=user,
            group=group,
            redirect_uri=request.redirect_uri,
            redirect_explicit=request.redirect_explicit,
            code_challenge=request.code_challenge,
            resource=request.resource,
            scopes=request.scopes,
            expires_at=self.clock() + CODE_SECONDS,
        )
        return construct_redirect_uri(request.redirect_uri, code=code, state=request.state, iss=self.issuer)

    def deny(self, request: SignInRequest) -> str:
        return construct_redirect_uri(
            request.redirect_uri,
            error="access_denied",
            error_description="the user did not allow it",
            state=request.state,
            iss=self.issuer,
        )

    # -- codes and tokens ------------------------------------------------------------------

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> CodeRecord | None:
        code_hash = _digest(authorization_code)
        found = await self._run(self.store.oauth_code, code_hash)
        if found is None or found.client_id != client.client_id:
            return None
        if found.redeemed:  # RFC 6749 §4.1.2: a code used twice revokes what it gave
            agent = await self._run(self.store.revoke_grant_of_code, code_hash)
            log.warning("authorization code presented again: grant %s revoked", agent)
            return None
        return CodeRecord(
            code=authorization_code,
            code_hash=code_hash,
            scopes=list(found.scopes),
            expires_at=found.expires_at,
            client_id=found.client_id,
            code_challenge=found.code_challenge,
            redirect_uri=AnyUrl(found.redirect_uri),
            redirect_uri_provided_explicitly=found.redirect_explicit,
            resource=found.resource,
            subject=found.user,
            user=found.user,
            group=found.group,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: CodeRecord
    ) -> OAuthToken:
        access, refresh, issued = self._new_tokens()
        base = _agent_base(client.client_name)
        for _ in range(5):
            agent = f"{base}-{secrets.token_hex(3)}"
            try:
                await self._run(self.store.redeem_oauth_code, authorization_code.code_hash, agent, issued)
            except ConflictError as exc:
                if "exists already" in str(exc):
                    continue
                raise TokenError("invalid_grant", str(exc)) from None
            log.info(
                "client %s signed in as agent %s (user %s, group %s)",
                client.client_id,
                agent,
                authorization_code.user,
                authorization_code.group,
            )
            return self._answer(access, refresh, authorization_code.scopes)
        raise TokenError("invalid_grant", "could not name the agent: try again")

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        if not refresh_token.startswith(REFRESH_PREFIX) or len(refresh_token) > 128:
            return None
        token_hash = _digest(refresh_token)
        found = await self._run(self.store.oauth_token, token_hash, "refresh")
        if found is None or found.client_id != client.client_id:
            return None
        if found.used:  # two parties hold it (RFC 9700 §4.14.2): end the grant
            await self._run(self.store.revoke_grant_of_token, token_hash)
            log.warning("refresh token of agent %s used twice: the grant is revoked", found.agent)
            return None
        return RefreshToken(
            token=refresh_token,
            client_id=found.client_id,
            scopes=list(found.scopes),
            expires_at=int(found.expires_at),
            resource=found.resource,
            subject=found.user,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        access, refresh, issued = self._new_tokens()
        try:
            await self._run(self.store.rotate_oauth_refresh, _digest(refresh_token.token), issued)
        except RefreshReused:
            log.warning("refresh token of client %s used twice: the grant is revoked", client.client_id)
            raise TokenError("invalid_grant", "refresh token already used: the sign-in is revoked") from None
        except ConflictError as exc:
            raise TokenError("invalid_grant", str(exc)) from None
        return self._answer(access, refresh, scopes)

    async def load_access_token(self, token: str) -> AccessToken | None:
        """For /revoke (the SDK's handler): an access token as its OAuth client holds it."""
        if not token.startswith(ACCESS_PREFIX) or len(token) > 128:
            return None
        found = await self._run(self.store.oauth_token, _digest(token), "access")
        if found is None:
            return None
        return AccessToken(token=token, client_id=found.client_id, scopes=list(found.scopes), resource=found.resource)

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        """RFC 7009: revoking either token ends the grant (its agent), every token of it with it."""
        agent = await self._run(self.store.revoke_grant_of_token, _digest(token.token))
        log.info("client %s revoked its sign-in (agent %s)", token.client_id, agent)

    async def exchange_identity_assertion(
        self, client: OAuthClientInformationFull, params: IdentityAssertionParams
    ) -> OAuthToken:
        """SEP-990's grant is not offered (its metadata does not name it; the SDK's handler refuses it first)."""
        raise TokenError("unsupported_grant_type", "this server does not take identity assertions")

    def _new_tokens(self) -> tuple[str, str, IssuedTokens]:
        access = ACCESS_PREFIX + secrets.token_urlsafe(32)
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        at = self.clock()
        issued = IssuedTokens(_digest(access), at + ACCESS_SECONDS, _digest(refresh), at + REFRESH_SECONDS)
        return access, refresh, issued

    @staticmethod
    def _answer(access: str, refresh: str, scopes: list[str]) -> OAuthToken:
        return OAuthToken(
            access_token=access,
            token_type="Bearer",
            expires_in=ACCESS_SECONDS,
            refresh_token=refresh,
            scope=" ".join(scopes) or None,
        )


def agent_access_token(
    store: Store, token: str, resource: str, clock: Callable[[], float] = time.time
) -> AccessToken | None:
    """An access token as the MCP endpoints take it: the caller is the grant's agent (`client_id`), in its group
    (`claims`), for its user; None unless it is live, unexpired and issued for this server's `resource`."""
    if len(token) > 128:
        return None
    found = store.oauth_token(_digest(token), "access")
    if found is None or found.expires_at <= clock() or not same_resource(found.resource, resource):
        return None
    return AccessToken(
        token=_digest(token),
        client_id=found.agent,
        scopes=list(found.scopes),
        expires_at=int(found.expires_at),
        resource=found.resource,
        subject=found.agent,
        claims={"group": found.group, "user": found.user, "client": found.client_id},
    )


_NAME_JUNK = re.compile(r"[^A-Za-z0-9_-]+")


def _agent_base(client_name: str | None) -> str:
    """`<client name>` of contract §6's `<client name>-<6 hex>`, sanitised to an agent name's characters."""
    base = _NAME_JUNK.sub("-", (client_name or "").lower()).strip("-_")
    return (re.sub(r"-{2,}", "-", base) or "client")[: MAX_CLIENT_NAME - 7]


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable()).strip()
