"""OAuth2 for credentials with an `oauth2` field: the authorization-code grant with `state` and PKCE
(RFC 6749 §4.1, RFC 7636) and the refresh grant (RFC 6749 §6).

The protocol parts come from the MCP SDK, which credgate depends on anyway: `PKCEParameters` makes the
verifier/challenge pair and `OAuthToken` parses token responses (RFC 6749 §5.1). What is left here is small:
the authorization URL, the token request with client authentication (§2.3.1), error answers (§5.2), and
turning a token response into the credential's fields. Nothing here stores or logs anything; no message
carries a token, a code or a client secret.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote_plus, urlencode, urlsplit, urlunsplit

import anyio
from pydantic import ValidationError

from .declarations import OAuthProvider
from .errors import CredgateError
from .readiness import REFRESH_MARGIN, TokenCondition, token_condition

if TYPE_CHECKING:  # the network parts load with the first request: `credgate` commands start faster without them
    import httpx2
    from mcp.shared.auth import OAuthToken

__all__ = [
    "ERROR_CODE",
    "MAX_LIFETIME",
    "MAX_TOKEN_RESPONSE",
    "TOKEN_TIMEOUT",
    "AuthorizationRequest",
    "Condition",
    "GrantRefused",
    "OAuthError",
    "TokenEndpointUnavailable",
    "TokenExpired",
    "code_from_callback",
    "condition",
    "exchange_code",
    "iso",
    "refresh",
    "start_authorization",
    "token_values",
    "utc_now",
]

TOKEN_TIMEOUT = 20.0
MAX_TOKEN_RESPONSE = 64 * 1024
MAX_LIFETIME = 10 * 365 * 24 * 3600  # an `expires_in` beyond this (or ≤ 0) is not taken as a lifetime
ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 §5.2's character set, bounded

Condition = TokenCondition


class OAuthError(CredgateError):
    """The flow or the token endpoint failed. The message is safe to show."""


class GrantRefused(OAuthError):
    """The token endpoint refused the grant with an error code (RFC 6749 §5.2), e.g. `invalid_grant`."""

    def __init__(self, error: str, message: str) -> None:
        self.error = error
        super().__init__(message)


class TokenEndpointUnavailable(OAuthError):
    """A transient failure: 5xx, timeout, network, an unreadable answer. Stored tokens stay as they are,
    but for a new refresh token that came with an unfit answer (`refresh_token`), which must not be lost."""

    def __init__(self, message: str, refresh_token: str | None = None) -> None:
        super().__init__(message)
        self.refresh_token = refresh_token


class TokenExpired(OAuthError):
    """The access token has expired and cannot be refreshed: the credential must be connected again."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the state of a stored token ----------------------------------------------------------------


def condition(credential: Mapping[str, str], now: datetime, margin: float = REFRESH_MARGIN) -> Condition:
    """`fresh`: use the access token as it is; `refresh`: refresh it first; `expired`: it cannot be used."""
    refresh_token, refused = bool(credential.get("refresh_token")), bool(credential.get("refresh_error"))
    return token_condition(credential.get("expires_at"), refresh_token, refused, now, margin)


# -- the authorization-code grant ---------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizationRequest:
    """One run of the flow: where to send the user, and what to check and send when they come back."""

    url: str
    state: str
    redirect_uri: str
    code_verifier: str | None

    def __repr__(self) -> str:  # the state and verifier stay out of logs and tracebacks
        return f"AuthorizationRequest(redirect_uri={self.redirect_uri!r})"


def start_authorization(provider: OAuthProvider, client_id: str, redirect_uri: str) -> AuthorizationRequest:
    state = secrets.token_urlsafe(32)
    query = {**provider.authorize_params, "response_type": "code", "client_id": client_id}
    query |= {"redirect_uri": redirect_uri, "state": state}
    if provider.scopes:
        query["scope"] = " ".join(provider.scopes)
    verifier = None
    if provider.pkce:
        from mcp.client.auth.oauth2 import PKCEParameters  # lazy: the MCP client, ~0.6 s at every command's start

        pkce = PKCEParameters.generate()
        verifier = pkce.code_verifier
        query |= {"code_challenge": pkce.code_challenge, "code_challenge_method": "S256"}
    parts = urlsplit(provider.authorize_url)
    joined = "&".join(q for q in (parts.query, urlencode(query)) if q)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))
    return AuthorizationRequest(url, state, redirect_uri, verifier)


def code_from_callback(request: AuthorizationRequest, params: Mapping[str, str]) -> str:
    """The authorization code of the redirect back to us, once its `state` proves it answers our request."""
    if not hmac.compare_digest(params.get("state", "").encode(), request.state.encode()):
        raise OAuthError("the redirect's state does not match this connection attempt: refused, nothing stored")
    if "error" in params:
        raise GrantRefused(_error_code(params["error"]), f"the provider refused: {_error_code(params['error'])}")
    code = params.get("code", "")
    if not code:
        raise OAuthError("the redirect carries no authorization code")
    return code


async def exchange_code(
    http: httpx2.AsyncClient,
    provider: OAuthProvider,
    client: Mapping[str, str],
    request: AuthorizationRequest,
    code: str,
) -> tuple[dict[str, str], list[str]]:
    """Trade the code for tokens. Returns (fields to store, fields to drop)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": request.redirect_uri}
    if request.code_verifier is not None:
        form["code_verifier"] = request.code_verifier
    token = await _token_request(http, provider, client, form, "the code")
    values, drop = token_values(provider, token, {"scope": " ".join(provider.scopes)}, utc_now())
    if "refresh_token" not in values:
        drop.append("refresh_token")  # a new grant: a refresh token of the one it replaces must not outlive it
    return values, drop


async def refresh(
    http: httpx2.AsyncClient, provider: OAuthProvider, credential: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Use the refresh token. Returns (fields to store, fields to drop)."""
    form = {"grant_type": "refresh_token", "refresh_token": credential["refresh_token"]}
    token = await _token_request(http, provider, credential, form, "the refresh token")
    return token_values(provider, token, credential, utc_now())


def token_values(
    provider: OAuthProvider, token: OAuthToken, previous: Mapping[str, str], now: datetime
) -> tuple[dict[str, str], list[str]]:
    """A token response as credential fields. A refresh token left out of the answer stays as it was
    (RFC 6749 §6); so does the scope (§5.1: omitted means as requested)."""
    values = {provider.field: token.access_token, "refreshed_at": iso(now)}
    drop = ["refresh_error"]
    if token.refresh_token:
        values["refresh_token"] = token.refresh_token
    if token.expires_in is not None and 0 < token.expires_in <= MAX_LIFETIME:
        values["expires_at"] = iso(now + timedelta(seconds=token.expires_in))
    else:  # none given, or none that makes sense: used until an API refuses it
        drop.append("expires_at")
    scope = token.scope if token.scope is not None else previous.get("scope", "")
    if scope:
        values["scope"] = scope
    return values, drop


# -- the token endpoint -------------------------------------------------------------------------


def _error_code(text: object) -> str:
    return text if isinstance(text, str) and ERROR_CODE.fullmatch(text) else "unknown_error"


def _client_auth(
    provider: OAuthProvider, client: Mapping[str, str], form: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    headers = {"Accept": "application/json"}
    client_id, secret = client.get("client_id", ""), client.get("client_secret", "")
    if secret and provider.token_auth == "client_secret_basic":
        pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form = {**form, "client_id": client_id} | ({"client_secret": secret} if secret else {})
    return headers, form


async def _token_request(
    http: httpx2.AsyncClient, provider: OAuthProvider, client: Mapping[str, str], form: dict[str, str], what: str
) -> OAuthToken:
    # lazy: httpx2 (~20 ms) and the MCP SDK (~0.6 s) would load at every command's start (admin imports us)
    import httpx2
    from mcp.shared.auth import OAuthToken

    headers, form = _client_auth(provider, client, form)
    try:
        with anyio.fail_after(TOKEN_TIMEOUT):
            async with http.stream(
                "POST", provider.token_url, data=form, headers=headers, follow_redirects=False
            ) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_TOKEN_RESPONSE:
                        raise TokenEndpointUnavailable("the token endpoint's answer is larger than 64 KiB")
    except TimeoutError:
        raise TokenEndpointUnavailable(f"the token endpoint did not answer within {TOKEN_TIMEOUT:g} s") from None
    except httpx2.HTTPError as exc:
        raise TokenEndpointUnavailable(f"the token endpoint cannot be reached ({exc.__class__.__name__})") from None
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = None
    status = response.status_code
    if status in (400, 401) and isinstance(answer, dict) and "error" in answer:
        error = _error_code(answer["error"])
        raise GrantRefused(error, f"the token endpoint refused {what}: {error}")
    if not 200 <= status < 300:
        raise TokenEndpointUnavailable(f"the token endpoint answered HTTP {status}")
    rotated = answer.get("refresh_token") if isinstance(answer, dict) else None
    try:
        token = OAuthToken.model_validate(answer)
    except ValidationError:
        token = None
    if token is None or not token.access_token:
        raise TokenEndpointUnavailable(
            "the token endpoint's answer is not a bearer token response (RFC 6749 §5.1)",
            rotated if isinstance(rotated, str) and rotated else None,
        )
    return token
