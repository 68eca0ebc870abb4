"""A real local OAuth2 authorization server for tests: authorization code + PKCE (S256), refresh, a protected API.

`OAuthProvider` is a `ThreadingHTTPServer` on 127.0.0.1 (port 0) in a daemon thread, like `gateway.Upstream`:

GET  /authorize    auto-approves (no login page): 302 to the loopback redirect_uri with `code` and `state`
POST /token        grant_type authorization_code (PKCE checked) or refresh_token; client auth by HTTP Basic
                   (form-urlencoded id and secret, RFC 6749 §2.3.1), by form fields, or none for a public client
GET  /api/whoami   needs `Authorization: Bearer <access token>` that was issued and is not expired (server-side)

Tests flip the switches (`invalid_grant`, `fail_status`, `refuse_with`, `token_delay`, `deny`,
`omit_refresh_token`) at any time and read the records (`code_requests`, `refresh_requests`, `token_requests`,
`authorize_requests`, `api_calls`, `current_access_token`, `current_refresh_token`). Every code and token starts
with `token_prefix`, so a test can scan for it as a canary. Nothing is printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

CODE_TTL = 60  # seconds an authorization code stays usable
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url-no-padding of a SHA-256 digest


def pkce_challenge(verifier: str) -> str:
    """The S256 code_challenge of `verifier`: base64url-no-padding(sha256(verifier))."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    expires_at: float
    used: bool = False


@dataclass
class _Access:
    client_id: str
    scope: str
    expires_at: float


@dataclass
class _Refresh:
    client_id: str
    scope: str
    valid: bool = True


class _OAuthError(Exception):
    """A token-endpoint error answer: status and JSON body {"error": ..., "error_description": ...}."""

    def __init__(self, status: int, error: str, description: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        self.headers = dict(headers or {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _ProviderHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet, and never a token in the output
        pass

    def do_GET(self) -> None:
        self._read_body()
        path = urlsplit(self.path).path
        owner = self.server.owner
        if path == "/authorize":
            status, body, content_type, headers = owner.handle_authorize(urlsplit(self.path).query)
            self._send(status, body, content_type, headers)
        elif path == "/api/whoami":
            status, data, headers = owner.handle_whoami(self.headers.get("Authorization"))
            self._send(status, json.dumps(data).encode(), "application/json", headers)
        elif path == "/token":
            self._send(405, b'{"error": "invalid_request"}', "application/json", {"Allow": "POST"})
        else:
            self._send(404, b'{"error": "not_found"}', "application/json")

    def do_POST(self) -> None:
        body = self._read_body()
        if urlsplit(self.path).path != "/token":
            self._send(404, b'{"error": "not_found"}', "application/json")
            return
        status, data, headers = self.server.owner.handle_token(
            body, self.headers.get("Content-Type"), self.headers.get("Authorization")
        )
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **headers}
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _ProviderHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    owner: OAuthProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
            super().handle_error(request, client_address)


class OAuthProvider:
    """A local OAuth2 authorization server with one client (`client_id`; public if `client_secret` is None).

    Switches (set them from the test at any time; each request reads them once under the lock):
    `invalid_grant` refresh_token grant answers 400 invalid_grant; `fail_status` the token endpoint answers this
    status to every request; `refuse_with` it answers 400 with this JSON object to every request; `token_delay`
    seconds to sleep before answering a token request; `deny` authorize redirects back with error=access_denied;
    `omit_refresh_token` token responses carry no refresh_token.

    PKCE (S256) is required of every client. Codes are single use: the first presentation that passes client
    authentication consumes the code, whatever the outcome. Refresh tokens stay valid until rotated away
    (`rotate_refresh`); a refresh without rotation, or with `omit_refresh_token`, answers no refresh_token and the
    old one stays valid. Access tokens stay valid until they expire (`access_ttl`, or `expire_access_tokens()`).
    A public client that sends a secret is refused (invalid_client).
    """

    def __init__(
        self,
        *,
        client_id: str = "credgate-test-client",
        client_secret: str | None = None,
        access_ttl: int = 3600,
        rotate_refresh: bool = True,
        token_prefix: str = "tok",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_ttl = access_ttl
        self.rotate_refresh = rotate_refresh
        self.token_prefix = token_prefix
        # switches
        self.invalid_grant: bool = False
        self.fail_status: int | None = None
        self.refuse_with: dict[str, Any] | None = None
        self.token_delay: float = 0.0
        self.deny: bool = False
        self.omit_refresh_token: bool = False
        # records
        self.code_requests: int = 0
        self.refresh_requests: int = 0
        self.api_calls: int = 0
        self.token_requests: list[dict[str, Any]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.current_access_token: str | None = None
        self.current_refresh_token: str | None = None
        # server-side state
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._lock = threading.RLock()
        self.stopping = threading.Event()
        self._server = _ProviderHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # -- addresses and lifecycle ------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authorize_url(self) -> str:
        return self.base + "/authorize"

    @property
    def token_url(self) -> str:
        return self.base + "/token"

    @property
    def api_url(self) -> str:
        return self.base + "/api/whoami"

    def start(self) -> OAuthProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    # -- helpers for tests --------------------------------------------------------------------------

    def issue_tokens(self, scope: str = "read") -> dict[str, Any]:
        """Mint an access/refresh token pair for `client_id` as if a flow had happened; the token response."""
        with self._lock:
            return self._mint(scope, refresh=True)

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired (server-side)."""
        with self._lock:
            past = time.time() - 1
            for access in self._access.values():
                access.expires_at = past

    def is_valid_refresh_token(self, token: str) -> bool:
        """Would a refresh with `token` be accepted now (ignoring the switches)?"""
        with self._lock:
            record = self._refresh.get(token)
            return bool(record and record.valid)

    # -- the endpoints (called from the handler threads) ---------------------------------------------

    def handle_authorize(self, raw_query: str) -> tuple[int, bytes, str, dict[str, str]]:
        """GET /authorize: (status, body, content type, headers)."""
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        with self._lock:
            self.authorize_requests.append(dict(query))
            deny = self.deny
        if query.get("client_id") != self.client_id:
            return _page(400, "unknown client_id")
        redirect_uri = query.get("redirect_uri", "")
        if not _loopback_redirect(redirect_uri):
            return _page(400, "redirect_uri must be http://127.0.0.1:PORT/... or http://localhost:PORT/...")
        state = query.get("state")

        def back(**params: str) -> tuple[int, bytes, str, dict[str, str]]:
            if state is not None:
                params["state"] = state
            sep = "&" if urlsplit(redirect_uri).query else "?"
            return 302, b"", "text/plain", {"Location": redirect_uri + sep + urlencode(params)}

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        method = query.get("code_challenge_method", "plain")
        challenge = query.get("code_challenge", "")
        if method != "S256":
            return back(error="invalid_request", error_description="code_challenge_method must be S256")
        if not _S256_CHALLENGE.fullmatch(challenge):
            return back(error="invalid_request", error_description="code_challenge missing or malformed")
        if deny:
            return back(error="access_denied")
        code = f"{self.token_prefix}-code-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._codes[code] = _Code(
                self.client_id, redirect_uri, challenge, query.get("scope") or "read", time.time() + CODE_TTL
            )
        return back(code=code)

    def handle_token(
        self, body: bytes, content_type: str | None, authorization: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST /token: (status, JSON body, headers)."""
        form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        grant_type = form.get("grant_type", "")
        basic = authorization is not None and authorization[:6].lower() == "basic "
        if basic:
            auth_method = "client_secret_basic"
        elif "client_secret" in form:
            auth_method = "client_secret_post"
        else:
            auth_method = "none"
        with self._lock:
            self.token_requests.append({"grant_type": grant_type, "auth_method": auth_method, "form": dict(form)})
            if grant_type == "authorization_code":
                self.code_requests += 1
            elif grant_type == "refresh_token":
                self.refresh_requests += 1
            delay, fail_status, refuse_with = self.token_delay, self.fail_status, self.refuse_with
        if delay > 0:
            self.stopping.wait(delay)
        if refuse_with is not None:
            return 400, dict(refuse_with), {}
        try:
            if fail_status is not None:
                error = "temporarily_unavailable" if fail_status == 503 else "server_error"
                raise _OAuthError(fail_status, error, "the token endpoint is failing (test switch)")
            if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
                raise _OAuthError(400, "invalid_request", "send application/x-www-form-urlencoded")
            client_id = self._authenticate(form, authorization if basic else None)
            if grant_type == "authorization_code":
                return 200, self._grant_code(client_id, form), {}
            if grant_type == "refresh_token":
                return 200, self._grant_refresh(client_id, form), {}
            raise _OAuthError(400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
        except _OAuthError as e:
            return e.status, {"error": e.error, "error_description": e.description}, e.headers

    def handle_whoami(self, authorization: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        """GET /api/whoami: (status, JSON body, headers)."""
        with self._lock:
            self.api_calls += 1
            token = ""
            if authorization and authorization[:7].lower() == "bearer ":
                token = authorization[7:].strip()
            access = self._access.get(token)
            if access is None or access.expires_at <= time.time():
                challenge = 'Bearer realm="oauth-provider", error="invalid_token"'
                return 401, {"error": "invalid_token"}, {"WWW-Authenticate": challenge}
            return 200, {"ok": True, "scope": access.scope, "token_suffix": token[-4:]}, {}

    # -- token endpoint internals ----------------------------------------------------------------------

    def _authenticate(self, form: dict[str, str], basic: str | None) -> str:
        """The authenticated client_id, or raise invalid_client (401)."""
        secret: str | None
        if basic is not None:
            if "client_secret" in form:
                raise _OAuthError(400, "invalid_request", "use one client authentication method, not two")
            try:
                decoded = base64.b64decode(basic[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _OAuthError(401, "invalid_client", "malformed Basic credentials", _BASIC) from None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise _OAuthError(401, "invalid_client", "malformed Basic credentials", _BASIC)
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if "client_id" in form and form["client_id"] != client_id:
                raise _OAuthError(400, "invalid_request", "client_id in the form differs from the Basic one")
            challenge_headers: Mapping[str, str] | None = _BASIC
        else:
            client_id = form.get("client_id", "")
            secret = form.get("client_secret")
            challenge_headers = None
        if client_id != self.client_id:
            raise _OAuthError(401, "invalid_client", "unknown client", challenge_headers)
        if self.client_secret is None:
            if secret:
                raise _OAuthError(401, "invalid_client", "this is a public client: it has no secret", challenge_headers)
            return client_id
        if secret is None or not hmac.compare_digest(secret.encode(), self.client_secret.encode()):
            raise _OAuthError(401, "invalid_client", "client authentication failed", challenge_headers)
        return client_id

    def _grant_code(self, client_id: str, form: dict[str, str]) -> dict[str, Any]:
        code, verifier = form.get("code"), form.get("code_verifier")
        if not code or verifier is None:
            raise _OAuthError(400, "invalid_request", "code and code_verifier are required")
        with self._lock:
            record = self._codes.get(code)
            if record is None or record.used:
                raise _OAuthError(400, "invalid_grant", "unknown or already used code")
            record.used = True  # single use, whatever happens next
            if record.expires_at <= time.time():
                raise _OAuthError(400, "invalid_grant", "code expired")
            if record.client_id != client_id or record.redirect_uri != form.get("redirect_uri"):
                raise _OAuthError(400, "invalid_grant", "code issued to another client or redirect_uri")
            if not _VERIFIER.fullmatch(verifier) or not hmac.compare_digest(pkce_challenge(verifier), record.challenge):
                raise _OAuthError(400, "invalid_grant", "PKCE verification failed")
            return self._mint(record.scope, refresh=not self.omit_refresh_token)

    def _grant_refresh(self, client_id: str, form: dict[str, str]) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise _OAuthError(400, "invalid_request", "refresh_token is required")
        with self._lock:
            if self.invalid_grant:
                raise _OAuthError(400, "invalid_grant", "refresh token revoked (test switch)")
            record = self._refresh.get(token)
            if record is None or not record.valid or record.client_id != client_id:
                raise _OAuthError(400, "invalid_grant", "unknown, rotated or revoked refresh token")
            scope = record.scope
            if form.get("scope"):
                if not set(form["scope"].split()) <= set(record.scope.split()):
                    raise _OAuthError(400, "invalid_scope", "requested scope exceeds the granted scope")
                scope = form["scope"]
            # rotation replaces the old refresh token; without rotation (or with omit_refresh_token, which would
            # strand the client) the answer has no refresh_token and the old one stays valid
            rotate = self.rotate_refresh and not self.omit_refresh_token
            if rotate:
                record.valid = False
            return self._mint(scope, refresh=rotate, refresh_scope=record.scope)

    def _mint(self, scope: str, *, refresh: bool, refresh_scope: str | None = None) -> dict[str, Any]:
        """Issue an access token (and a refresh token if `refresh`); the caller holds the lock."""
        access = f"{self.token_prefix}-at-{secrets.token_urlsafe(24)}"
        self._access[access] = _Access(self.client_id, scope, time.time() + self.access_ttl)
        self.current_access_token = access
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
            "scope": scope,
        }
        if refresh:
            token = f"{self.token_prefix}-rt-{secrets.token_urlsafe(24)}"
            self._refresh[token] = _Refresh(self.client_id, refresh_scope or scope)
            self.current_refresh_token = token
            answer["refresh_token"] = token
        return answer


_BASIC = {"WWW-Authenticate": 'Basic realm="oauth-provider"'}


def _loopback_redirect(uri: str) -> bool:
    """http://127.0.0.1:PORT/... or http://localhost:PORT/..., with an explicit port and no fragment."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and parts.hostname in ("127.0.0.1", "localhost")
        and parts.netloc.lower() in (f"127.0.0.1:{port}", f"localhost:{port}")
        and port is not None
        and not parts.fragment
        and "#" not in uri
    )


def _page(status: int, message: str) -> tuple[int, bytes, str, dict[str, str]]:
    body = f"<!doctype html><title>OAuth error</title><p>{message}</p>\n".encode()
    return status, body, "text/html; charset=utf-8", {}


@contextmanager
def running_oauth_provider(**kwargs: Any) -> Iterator[OAuthProvider]:
    """An `OAuthProvider(**kwargs)`, started, stopped on exit."""
    provider = OAuthProvider(**kwargs).start()
    try:
        yield provider
    finally:
        provider.stop()


def oauth_tool(
    provider: OAuthProvider,
    name: str = "whoami",
    *,
    type_name: str = "acme",
    scopes: str = '["read"]',
    extra_field: str = "",
    provider_extra: str = "",
) -> str:
    """The TOML of an http tool calling the provider's /api/whoami with an OAuth2 credential (the access
    token goes as `Authorization: Bearer …` by default)."""
    return (
        f'name = "{name}"\ndescription = "Who am I at the provider."\n'
        f'[credential]\ntype = "{type_name}"\nfields = [\n'
        f'  {{ name = "token", kind = "oauth2", authorize_url = "{provider.authorize_url}", '
        f'token_url = "{provider.token_url}", scopes = {scopes}{provider_extra} }},\n'
        f"{extra_field}]\n"
        f'[handler]\nkind = "http"\nurl = "{provider.api_url}"\n'
    )
