"""Sign-in through the organisation's OpenID Connect provider (issue 23): the relying party's side.

1. `SsoSettings.from_options` checks the four settings (`CREDGATE_OIDC_*`, contract §6);
2. `SsoClient.authorization_url(flow, redirect_uri)` sends the browser to the provider: the authorization code
   flow with PKCE (S256), `state` and `nonce` (`new_flow` makes them; the caller keeps them until the callback);
3. `SsoClient.finish(flow, params, redirect_uri)` checks the callback's `state` (and `iss`, RFC 9207), trades the
   code at the token endpoint, and returns the `Identity` of the ID token once it is verified: signed by one of
   the provider's keys (its JWKS; asymmetric algorithms only: never `none` nor HS*), for this issuer and this
   client (`aud`, and `azp` when there are several audiences), in date (`exp`, `iat`, a minute's leeway), and
   carrying the flow's `nonce`.

The JOSE part is PyJWT (a dependency of the MCP SDK, kept and maintained, with the `crypto` extra's
cryptography): it verifies one signature with one key we chose; which keys and algorithms may be used, and
every claim OpenID Connect adds, are checked here. The JWKS and the discovery document are fetched with httpx2
(bounded in time and size), kept for an hour, and the JWKS is read again (at most once a minute) when a token
names a key it lacks: a provider's key rotation needs no restart.

No message carries a token, a code, the nonce, the verifier or the client secret. The HTTP and JOSE libraries
load with the first sign-in; this module imports nothing of MCP, the web or the CLI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlencode, urlsplit, urlunsplit

import anyio

from .errors import CredgateError
from .loopback import is_loopback_host

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "ALLOWED_ALGORITHMS",
    "FLOW_SECONDS",
    "HTTP_TIMEOUT",
    "JWKS_REFETCH_SECONDS",
    "LEEWAY",
    "MAX_RESPONSE",
    "METADATA_SECONDS",
    "SCOPES",
    "Flow",
    "IdTokenError",
    "Identity",
    "ProviderMetadata",
    "SsoClient",
    "SsoError",
    "SsoSettings",
    "UnknownKeyError",
    "check_url",
    "new_flow",
    "parse_metadata",
    "pkce_challenge",
    "user_name_hint",
    "verify_id_token",
]

SCOPES = "openid email profile"
# Signatures with a key pair only: `none` has no signature, and an HS* one would be made with the client secret,
# which we share with the provider (and any holder of it could then mint sign-ins).
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)
LEEWAY = 60  # seconds of clock skew allowed on exp and iat
HTTP_TIMEOUT = 15.0
MAX_RESPONSE = 256 * 1024  # a discovery document, a JWKS or a token response larger than this is refused
FLOW_SECONDS = 600  # a sign-in started more than 10 minutes ago is not finished
METADATA_SECONDS = 3600
JWKS_REFETCH_SECONDS = 60  # an unknown key id reads the JWKS again, at most this often
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 §5.2's characters, bounded
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")


class SsoError(CredgateError):
    """Sign-in through the provider failed, or its settings are wrong. The message is safe to show."""


class IdTokenError(SsoError):
    """The ID token does not prove a sign-in for us: bad signature, issuer, audience, date or nonce."""


class UnknownKeyError(IdTokenError):
    """The ID token names a signing key the provider's JWKS does not hold (yet: it may have rotated)."""


# -- settings ---------------------------------------------------------------------------------------


def check_url(url: str, what: str) -> str:
    """`url` when it is https://, or http:// to a loopback host (a provider on this machine); else one line."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return url
    raise SsoError(f"{what} must be an https:// URL (http:// only to a loopback host), not {url!r}")


@dataclass(frozen=True)
class SsoSettings:
    """The organisation's provider and our client there (app lifetime). The client secret's repr is masked."""

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    default_group: str | None = None

    @property
    def issuer_host(self) -> str:
        return urlsplit(self.issuer).netloc

    @classmethod
    def from_options(
        cls,
        issuer: str | None,
        client_id: str | None,
        client_secret: str | None,
        default_group: str | None,
    ) -> SsoSettings | None:
        """The settings, None when SSO is off (no issuer and nothing else), or one line naming the field."""
        if not issuer:
            if client_id or client_secret or default_group:
                raise SsoError("--oidc-issuer (CREDGATE_OIDC_ISSUER) is required by the other --oidc-* settings")
            return None
        parts = urlsplit(check_url(issuer, "--oidc-issuer (CREDGATE_OIDC_ISSUER)"))
        if parts.query or parts.fragment:
            raise SsoError("--oidc-issuer (CREDGATE_OIDC_ISSUER) has no query or fragment (OpenID Connect Discovery)")
        if not client_id:
            raise SsoError("--oidc-client-id (CREDGATE_OIDC_CLIENT_ID) is required with --oidc-issuer")
        if len(client_id) > 255 or any(ord(c) < 0x20 for c in client_id):
            raise SsoError("--oidc-client-id (CREDGATE_OIDC_CLIENT_ID) is 1-255 printable characters")
        return cls(issuer, client_id, client_secret or None, default_group or None)


# -- the provider's metadata --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderMetadata:
    """What the discovery document says that we use."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth: str  # client_secret_basic | client_secret_post | none
    algorithms: frozenset[str]  # the ID token algorithms both sides accept
    iss_in_response: bool  # RFC 9207: the callback carries `iss`
    userinfo_endpoint: str | None = None  # asked for the email when the ID token does not carry it


def parse_metadata(document: object, settings: SsoSettings) -> ProviderMetadata:
    """Check a discovery document against the settings (OpenID Connect Discovery 1.0 §4.3)."""
    if not isinstance(document, dict):
        raise SsoError("the provider's discovery document is not a JSON object")
    if document.get("issuer") != settings.issuer:
        named = document.get("issuer")
        shown = repr(named[:200]) if isinstance(named, str) else "no issuer"
        raise SsoError(
            f"the provider's discovery document names {shown}, not the configured issuer {settings.issuer!r}: "
            "set --oidc-issuer (CREDGATE_OIDC_ISSUER) to exactly the provider's issuer"
        )
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise SsoError(f"the provider's discovery document has no {name}")
        endpoints[name] = check_url(value, f"the provider's {name}")
    methods = _strings(document.get("token_endpoint_auth_methods_supported"), ["client_secret_basic"])
    if settings.client_secret is None:
        token_auth = "none"
    elif "client_secret_basic" in methods:
        token_auth = "client_secret_basic"
    elif "client_secret_post" in methods:
        token_auth = "client_secret_post"
    else:
        raise SsoError("the provider takes neither client_secret_basic nor client_secret_post at its token endpoint")
    if "code" not in _strings(document.get("response_types_supported"), ["code"]):
        raise SsoError("the provider does not offer the authorization code flow (response type code)")
    if "S256" not in _strings(document.get("code_challenge_methods_supported"), ["S256"]):
        raise SsoError("the provider does not offer PKCE with S256")
    offered = _strings(document.get("id_token_signing_alg_values_supported"), ["RS256"])
    algorithms = frozenset(offered) & ALLOWED_ALGORITHMS
    if not algorithms:
        raise SsoError("the provider signs ID tokens with no algorithm we accept (a key pair's: RS*, PS*, ES*, EdDSA)")
    return ProviderMetadata(
        settings.issuer,
        endpoints["authorization_endpoint"],
        endpoints["token_endpoint"],
        endpoints["jwks_uri"],
        token_auth,
        algorithms,
        document.get("authorization_response_iss_parameter_supported") is True,
        _userinfo_endpoint(document.get("userinfo_endpoint")),
    )


def _userinfo_endpoint(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return check_url(value, "the provider's userinfo_endpoint")


def _strings(value: object, default: list[str]) -> list[str]:
    if value is None:
        return default
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


# -- one sign-in --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """One sign-in under way: kept by the browser (sealed) between the redirect to the provider and its answer."""

    state: str = field(repr=False)
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)
    next_path: str = "/"
    started: float = 0.0

    def expired(self, now: float | None = None) -> bool:
        return not 0 <= (time.time() if now is None else now) - self.started <= FLOW_SECONDS


def new_flow(next_path: str, now: float | None = None) -> Flow:
    return Flow(
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(48),  # 64 characters of RFC 7636's unreserved set
        next_path,
        time.time() if now is None else now,
    )


def pkce_challenge(verifier: str) -> str:
    """RFC 7636's S256 challenge: base64url(sha256(verifier)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in (from a verified ID token)."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    preferred_username: str | None
    name: str | None


def user_name_hint(identity: Identity) -> str:
    """A credgate user name for a new user: the preferred username, else the email's local part, else the
    name, else `sso-user`; reduced to letters, digits, `_` and `-` (accents dropped), at most 56 characters
    (the store may append `-N` to make it unique)."""
    for candidate in (
        identity.preferred_username,
        identity.email.partition("@")[0] if identity.email else None,
        identity.name,
    ):
        if not candidate:
            continue
        ascii_text = unicodedata.normalize("NFKD", candidate).encode("ascii", "ignore").decode()
        cleaned = _NAME_CHARACTERS.sub("-", ascii_text).strip("-_")[:56].strip("-_")
        if cleaned:
            return cleaned
    return "sso-user"


def verify_id_token(
    token: str,
    keys: list[dict[str, Any]],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: frozenset[str] = ALLOWED_ALGORITHMS,
    leeway: int = LEEWAY,
) -> Identity:
    """The identity an ID token proves, once every check of OpenID Connect Core §3.1.3.7 passed.

    `keys`: the provider's JWKS entries. Only key pairs' public keys are used (never an `oct` key), and only
    with the algorithm of the token's header when that is an allowed one and the key's own `alg` (if any)."""
    import jwt  # lazy: PyJWT and cryptography's primitives, with the first sign-in

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise IdTokenError("the ID token is not a signed JWT") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS or alg not in algorithms:
        shown = alg if isinstance(alg, str) and _ERROR_CODE.fullmatch(alg) else "?"
        raise IdTokenError(f"the ID token's algorithm {shown!r} is refused (only the provider's key pairs sign)")
    key = _signing_key(keys, header.get("kid"), alg)
    try:
        jwk = jwt.PyJWK(key, algorithm=alg)
    except jwt.PyJWTError:
        raise IdTokenError(f"the provider's signing key does not fit algorithm {alg}") from None
    try:
        claims = jwt.decode(
            token,
            jwk,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise IdTokenError("the ID token has expired") from None
    except jwt.ImmatureSignatureError:
        raise IdTokenError("the ID token is not valid yet (iat or nbf in the future)") from None
    except jwt.InvalidAudienceError:
        raise IdTokenError("the ID token is not for this client (aud)") from None
    except jwt.InvalidIssuerError:
        raise IdTokenError("the ID token is from another issuer (iss)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise IdTokenError(f"the ID token has no {exc.claim} claim") from None
    except jwt.InvalidSignatureError:
        raise IdTokenError("the ID token's signature does not verify with the provider's key") from None
    except jwt.PyJWTError as exc:
        raise IdTokenError(f"the ID token is refused ({type(exc).__name__})") from None
    return _identity(claims, issuer=issuer, client_id=client_id, nonce=nonce)


def _signing_key(keys: list[dict[str, Any]], kid: object, alg: str) -> dict[str, Any]:
    usable = [
        k
        for k in keys
        if isinstance(k, dict)
        and k.get("kty") in ("RSA", "EC", "OKP")  # never "oct": a shared secret is not the provider's signature
        and k.get("use", "sig") == "sig"
        and k.get("alg", alg) == alg
    ]
    if kid is not None:
        found = [k for k in usable if k.get("kid") == kid]
        if not found:
            raise UnknownKeyError("the ID token names a signing key the provider does not publish")
        return found[0]
    if len(usable) != 1:
        raise UnknownKeyError("the ID token names no key id, and the provider publishes several keys")
    return usable[0]


def _identity(claims: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str) -> Identity:
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise IdTokenError("the ID token was issued to another party (azp)")
    given = claims.get("nonce")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
        raise IdTokenError("the ID token's nonce is not this sign-in's: refused (a replay?)")
    subject = claims["sub"]
    if not isinstance(subject, str) or not 0 < len(subject) <= 255:
        raise IdTokenError("the ID token's subject (sub) is not a string of 1-255 characters")
    return Identity(issuer, subject, *_identity_claims(claims))


def _identity_claims(claims: Mapping[str, Any]) -> tuple[str | None, bool, str | None, str | None]:
    """(email, email_verified, preferred_username, name) of an ID token's or a userinfo answer's claims."""
    email = claims.get("email")
    email = email.strip() if isinstance(email, str) and 3 <= len(email.strip()) <= 320 else None
    verified = claims.get("email_verified")
    preferred = claims.get("preferred_username")
    name = claims.get("name")
    return (
        email,
        email is not None and (verified is True or verified == "true"),
        preferred[:255] if isinstance(preferred, str) else None,
        name[:255] if isinstance(name, str) else None,
    )


# -- the provider, over HTTP ---------------------------------------------------------------------------


class SsoClient:
    """The provider as credgate sees it (app lifetime): its metadata and keys, cached, and the two requests
    of a sign-in. Each request has a connection of its own (a sign-in is rare; the app's event loop may change
    under a test client); two sign-ins that both find the cache stale both read the provider, harmlessly.

    `transport`: for tests, an httpx2 transport to use instead of the network."""

    def __init__(self, settings: SsoSettings, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._transport = transport
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._jwks: tuple[float, list[dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        return f"SsoClient(issuer={self.settings.issuer!r})"

    async def metadata(self) -> ProviderMetadata:
        cached = self._metadata
        if cached is not None and time.monotonic() - cached[0] < METADATA_SECONDS:
            return cached[1]
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        found = parse_metadata(await self._get_json(url, "the provider's discovery document"), self.settings)
        self._metadata = (time.monotonic(), found)
        return found

    async def keys(self, *, again: bool = False) -> list[dict[str, Any]]:
        """The provider's JWKS; `again`: read it anew (a key we lack), unless it was read under a minute ago."""
        metadata = await self.metadata()
        cached = self._jwks
        if cached is not None and time.monotonic() - cached[0] < (JWKS_REFETCH_SECONDS if again else METADATA_SECONDS):
            return cached[1]
        document = await self._get_json(metadata.jwks_uri, "the provider's JWKS")
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise SsoError("the provider's JWKS has no keys")
        found = [k for k in keys if isinstance(k, dict)]
        self._jwks = (time.monotonic(), found)
        return found

    async def authorization_url(self, flow: Flow, redirect_uri: str) -> str:
        metadata = await self.metadata()
        query = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": SCOPES,
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": pkce_challenge(flow.verifier),
            "code_challenge_method": "S256",
        }
        parts = urlsplit(metadata.authorization_endpoint)
        joined = "&".join(q for q in (parts.query, urlencode(query)) if q)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))

    async def finish(self, flow: Flow, params: Mapping[str, str], redirect_uri: str) -> Identity:
        """The identity the provider's answer to `flow` proves (the redirect's query parameters)."""
        if flow.expired():
            raise SsoError("this sign-in was started more than 10 minutes ago: start again")
        if not hmac.compare_digest(params.get("state", "").encode(), flow.state.encode()):
            raise SsoError("the provider's answer does not belong to this sign-in (state): start again")
        metadata = await self.metadata()
        if ("iss" in params or metadata.iss_in_response) and params.get("iss") != metadata.issuer:
            raise SsoError("the answer comes from another issuer than the configured one (iss)")
        if "error" in params:
            raise SsoError(f"the provider refused the sign-in: {_error_code(params['error'])}")
        code = params.get("code", "")
        if not code:
            raise SsoError("the provider's answer carries no authorization code")
        id_token, access_token = await self._exchange(metadata, code, flow, redirect_uri)
        try:
            identity = self._verify(id_token, await self.keys(), metadata, flow)
        except UnknownKeyError:
            identity = self._verify(id_token, await self.keys(again=True), metadata, flow)
        if identity.email is None and metadata.userinfo_endpoint and access_token:
            identity = await self._with_userinfo(identity, metadata.userinfo_endpoint, access_token)
        return identity

    async def _with_userinfo(self, identity: Identity, endpoint: str, access_token: str) -> Identity:
        """The email (and names) from the userinfo endpoint, for providers that keep them out of the ID token
        in the code flow (OpenID Connect Core §5.4; oidc-provider's default). Its `sub` must be the ID token's
        (§5.3.2); a failure there leaves the identity as it was (it still signs in by its subject)."""
        try:
            status, answer = await self._request(
                "GET",
                endpoint,
                "the provider's userinfo endpoint",
                headers={"Accept": "application/json", "Authorization": f"Bearer {access_token}"},
            )
        except SsoError:
            return identity
        if status != 200 or not isinstance(answer, dict) or answer.get("sub") != identity.subject:
            return identity
        found = _identity_claims(answer)
        return Identity(
            identity.issuer,
            identity.subject,
            found[0],
            found[1],
            found[2] or identity.preferred_username,
            found[3] or identity.name,
        )

    def _verify(self, token: str, keys: list[dict[str, Any]], metadata: ProviderMetadata, flow: Flow) -> Identity:
        return verify_id_token(
            token,
            keys,
            issuer=metadata.issuer,
            client_id=self.settings.client_id,
            nonce=flow.nonce,
            algorithms=metadata.algorithms,
        )

    async def _exchange(
        self, metadata: ProviderMetadata, code: str, flow: Flow, redirect_uri: str
    ) -> tuple[str, str | None]:
        """(ID token, access token) for the code."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": flow.verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.settings.client_secret
        if metadata.token_auth == "client_secret_basic" and secret is not None:
            pair = f"{quote_plus(self.settings.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.settings.client_id
            if secret is not None:
                form["client_secret"] = secret
        status, answer = await self._request("POST", metadata.token_endpoint, "the token endpoint", form, headers)
        if status in (400, 401) and isinstance(answer, dict) and "error" in answer:
            raise SsoError(f"the token endpoint refused the code: {_error_code(answer['error'])}")
        if not 200 <= status < 300:
            raise SsoError(f"the token endpoint answered HTTP {status}")
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise SsoError("the token endpoint's answer has no ID token (was the openid scope granted?)")
        access_token = answer.get("access_token") if isinstance(answer, dict) else None
        return id_token, access_token if isinstance(access_token, str) and access_token else None

    async def _get_json(self, url: str, what: str) -> object:
        status, answer = await self._request("GET", url, what)
        if status != 200:
            raise SsoError(f"{what} answered HTTP {status}")
        return answer

    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, object]:
        import httpx2

        try:
            with anyio.fail_after(HTTP_TIMEOUT):
                client = httpx2.AsyncClient(follow_redirects=False, trust_env=False, transport=self._transport)
                async with (
                    client,
                    client.stream(
                        method, url, data=form, headers=headers or {"Accept": "application/json"}
                    ) as response,
                ):
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE:
                            raise SsoError(f"{what}'s answer is larger than {MAX_RESPONSE // 1024} KiB")
        except TimeoutError:
            raise SsoError(f"{what} did not answer within {HTTP_TIMEOUT:g} s") from None
        except httpx2.HTTPError as exc:
            raise SsoError(f"{what} cannot be reached ({exc.__class__.__name__})") from None
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            answer = None
        if response.status_code == 200 and answer is None:
            raise SsoError(f"{what}'s answer is not JSON")
        return response.status_code, answer


def _error_code(text: object) -> str:
    return text if isinstance(text, str) and _ERROR_CODE.fullmatch(text) else "unknown_error"
