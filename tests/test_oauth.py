"""OAuth2 credentials: `kind = "oauth2"` declarations, the protocol helpers of oauth.py against a real local
provider, `credgate cred connect` end to end as a real process (an HTTP client plays the browser), and what the
admin commands show about OAuth2 credentials (cred add/update/show, group show).

Nothing is mocked: the provider is `oauth_provider.OAuthProvider` on 127.0.0.1, the store a SQLite file under
`tmp_path`, the CLI a `python -m mcp_credgate` process. Tests named `test_src_bug_*` fail on purpose: each shows
a bug in src/ (see its docstring).
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
from base64 import urlsafe_b64encode
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx2
import pytest
from click.testing import Result
from mcp.shared.auth import OAuthToken

from mcp_credgate import oauth, readiness
from mcp_credgate.config import Settings
from mcp_credgate.credential import mask
from mcp_credgate.declarations import Catalog, CredentialSpec, load_catalog
from mcp_credgate.declarations import OAuthProvider as ProviderDecl
from mcp_credgate.people import create_user
from mcp_credgate.store import Store
from tests.support.cli import CliRun, ProcRun
from tests.support.gateway import assert_no_leak, assert_no_leak_at_rest, closed_port, credgate_env, make_canary
from tests.support.oauth_provider import OAuthProvider, oauth_tool, pkce_challenge, running_oauth_provider
from tests.support.samples import write_tool

# A client secret with the characters the form-urlencoding of HTTP Basic credentials changes (RFC 6749 §2.3.1):
# sent raw, ':' would split it, '+' would turn into a space and '%2F' into '/'.
CLIENT_SECRET = make_canary("csec") + ":+%2F/ &=~"
CLIENT_ID = "credgate-test-client"  # the provider's default client
REDIRECT = "http://127.0.0.1:53682/callback"  # for unit tests: the provider only checks its form
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

AUTHORIZE = 'authorize_url = "https://auth.example.com/authorize"'
TOKEN = 'token_url = "https://auth.example.com/token"'


def at(seconds: float) -> str:
    """NOW + seconds, as credgate stores times."""
    return oauth.iso(NOW + timedelta(seconds=seconds))


# -- declarations -----------------------------------------------------------------------------------


def declaration(fields: str, *, handler: str = 'url = "https://api.example.com/me"', extra: str = "") -> str:
    return (
        'name = "acme_me"\ndescription = "Who am I."\n'
        '[input_schema]\ntype = "object"\nproperties.tenant = { type = "string" }\n'
        f'[credential]\ntype = "acme"\nfields = [\n{fields}\n]\n'
        f'[handler]\nkind = "http"\n{handler}\n{extra}'
    )


OAUTH_FIELD = f'{{ name = "token", kind = "oauth2", {AUTHORIZE}, {TOKEN}, scopes = ["read", "write"] }}'


def load_one(tmp_path: Path, text: str) -> tuple[Catalog, Path]:
    path = write_tool(tmp_path / "decl.d", "acme_me.toml", text)
    return load_catalog([path.parent]), path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    catalog, path = load_one(tmp_path, text)
    assert catalog.problems, "expected a problem"
    assert "acme_me" not in catalog.tools
    for problem in catalog.problems:
        assert problem.startswith(f"{path}: "), problem  # every problem names the file first
    return list(catalog.problems)


def test_valid_oauth2_type_loads_with_its_companions(tmp_path: Path) -> None:
    fields = (
        f'{{ name = "token", kind = "oauth2", {AUTHORIZE}, {TOKEN}, scopes = ["read", "write"], '
        'token_auth = "client_secret_post", authorize_params = { prompt = "consent" } },\n'
        '{ name = "account", kind = "text", required = false },'
    )
    catalog, _ = load_one(tmp_path, declaration(fields))

    assert catalog.problems == ()
    spec = catalog.types["acme"]
    by_name = {f.name: f for f in spec.fields}
    assert list(by_name) == [
        "token",
        "account",
        "client_id",
        "client_secret",
        "refresh_token",
        "expires_at",
        "scope",
        "refreshed_at",
        "refresh_error",
    ]
    assert by_name["token"].secret and by_name["token"].required
    assert not by_name["client_id"].secret and by_name["client_id"].required
    assert by_name["client_secret"].secret and not by_name["client_secret"].required
    assert by_name["refresh_token"].secret and not by_name["refresh_token"].required
    for name in ("expires_at", "scope", "refreshed_at", "refresh_error"):
        assert not by_name[name].secret and not by_name[name].required
    assert by_name["expires_at"].pattern is not None
    assert spec.secret_fields == {"token", "client_secret", "refresh_token"}
    assert spec.managed_fields == {"refreshed_at", "refresh_error"}
    assert "refresh_token" not in spec.handler_fields and "client_secret" not in spec.handler_fields
    assert {"token", "client_id", "account", "expires_at"} <= spec.handler_fields
    assert spec.oauth == ProviderDecl(
        field="token",
        authorize_url="https://auth.example.com/authorize",
        token_url="https://auth.example.com/token",
        scopes=("read", "write"),
        pkce=True,
        token_auth="client_secret_post",
        authorize_params={"prompt": "consent"},
    )


def test_provider_defaults_and_loopback_http_token_url(tmp_path: Path) -> None:
    fields = (
        '{ name = "token", kind = "oauth2", authorize_url = "http://localhost:9000/authorize", '
        'token_url = "http://127.0.0.1:9000/token" }'
    )
    catalog, _ = load_one(tmp_path, declaration(fields))

    assert catalog.problems == ()
    provider = catalog.types["acme"].oauth
    assert provider is not None
    assert (provider.scopes, provider.pkce, provider.token_auth, dict(provider.authorize_params)) == (
        (),
        True,
        "client_secret_basic",
        {},
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            f'{{ name = "key", kind = "token", {TOKEN} }}',
            "credential.fields[0]: token_url is only for fields of kind oauth2",
            id="provider-key-on-a-token-field",
        ),
        pytest.param(
            '{ name = "key", kind = "api_key", scopes = ["read"] }',
            "credential.fields[0]: scopes is only for fields of kind oauth2",
            id="scopes-on-an-api-key-field",
        ),
        pytest.param(
            '{ name = "user", kind = "username" },\n{ name = "pw", kind = "password", pkce = false }',
            "credential.fields[1]: pkce is only for fields of kind oauth2",
            id="pkce-on-a-password-field",
        ),
        pytest.param(
            f'{{ name = "token", kind = "oauth2", {AUTHORIZE} }}',
            "credential.fields[0]: a field of kind oauth2 needs token_url",
            id="missing-token-url",
        ),
        pytest.param(
            f'{{ name = "token", kind = "oauth2", {TOKEN} }}',
            "credential.fields[0]: a field of kind oauth2 needs authorize_url",
            id="missing-authorize-url",
        ),
        pytest.param(
            f'{{ name = "token", kind = "oauth2", {AUTHORIZE}, token_url = "http://auth.example.com/token" }}',
            "credential.fields[0].token_url: a credential may be sent only over https://",
            id="http-token-url-not-loopback",
        ),
        pytest.param(
            f'{{ name = "token", kind = "oauth2", {TOKEN}, authorize_url = "http://auth.example.com/authorize" }}',
            "credential.fields[0].authorize_url: a credential may be sent only over https://",
            id="http-authorize-url-not-loopback",
        ),
        pytest.param(
            f'{{ name = "token", kind = "oauth2", {AUTHORIZE}, '
            'token_url = "https://auth.example.com/{args.tenant}/token" }',
            "credential.fields[0].token_url: placeholders are not allowed here",
            id="placeholder-in-token-url",
        ),
        pytest.param(
            f'{{ name = "token", kind = "oauth2", {TOKEN}, '
            'authorize_url = "https://auth.example.com/authorize?login_hint={cred.client_id}" }',
            "credential.fields[0].authorize_url: placeholders are not allowed here",
            id="placeholder-in-authorize-url",
        ),
        pytest.param(
            f'{{ name = "token", kind = "oauth2", {AUTHORIZE}, {TOKEN}, token_auth = "private_key_jwt" }}',
            "credential.fields[0].token_auth",
            id="unknown-token-auth",
        ),
        pytest.param(
            f'{OAUTH_FIELD},\n{{ name = "client_id", kind = "text" }}',
            "credential: field name 'client_id' is taken by the oauth2 field 'token'",
            id="companion-name-client_id",
        ),
        pytest.param(
            f'{OAUTH_FIELD},\n{{ name = "refresh_token", kind = "token" }}',
            "credential: field name 'refresh_token' is taken by the oauth2 field 'token'",
            id="companion-name-refresh_token",
        ),
        pytest.param(
            f'{OAUTH_FIELD},\n{{ name = "expires_at", kind = "text", required = false }}',
            "credential: field name 'expires_at' is taken by the oauth2 field 'token'",
            id="companion-name-expires_at",
        ),
        pytest.param(
            f'{OAUTH_FIELD},\n{{ name = "second", kind = "oauth2", {AUTHORIZE}, {TOKEN} }}',
            "credential: a credential type may have one field of kind oauth2",
            id="two-oauth2-fields",
        ),
    ],
)
def test_bad_oauth2_declarations_name_file_and_field(tmp_path: Path, fields: str, expected: str) -> None:
    found = problems_of(tmp_path, declaration(fields))

    assert any(expected in p for p in found), found


@pytest.mark.parametrize("kept", ["refresh_token", "client_secret"])
def test_refresh_token_and_client_secret_cannot_be_placed_in_a_handler(tmp_path: Path, kept: str) -> None:
    text = declaration(OAUTH_FIELD, extra=f'headers = {{ "X-Kept" = "{{cred.{kept}}}" }}\n')

    found = problems_of(tmp_path, text)

    assert found == [
        f"{found[0].split(': ')[0]}: handler.headers.X-Kept: {{cred.{kept}}} is kept by credgate to refresh the "
        "OAuth2 token and is never sent to a tool"
    ]


def test_refresh_token_cannot_be_placed_in_the_url_or_body_either(tmp_path: Path) -> None:
    text = declaration(
        OAUTH_FIELD,
        handler='method = "POST"\nurl = "https://api.example.com/me?rt={cred.refresh_token}"\n'
        'json = { secret = "{cred.client_secret}" }',
    )

    found = problems_of(tmp_path, text)

    assert any("handler.url: {cred.refresh_token} is kept by credgate" in p for p in found), found
    assert any("handler.json.secret: {cred.client_secret} is kept by credgate" in p for p in found), found


def test_two_oauth2_fields_are_named_in_the_problem(tmp_path: Path) -> None:
    """Every problem names the file and the field: here both oauth2 fields."""
    text = declaration(f'{OAUTH_FIELD},\n{{ name = "second", kind = "oauth2", {AUTHORIZE}, {TOKEN} }}')

    found = problems_of(tmp_path, text)

    assert any("'second'" in p or "fields[1]" in p for p in found), found


def test_default_bearer_header_is_added_when_the_token_is_placed_nowhere(tmp_path: Path) -> None:
    catalog, _ = load_one(tmp_path, declaration(OAUTH_FIELD, extra='headers = { Accept = "application/json" }\n'))

    assert catalog.problems == ()
    handler = catalog.tools["acme_me"].decl.handler
    assert handler.kind == "http"
    assert handler.headers == {"Accept": "application/json", "Authorization": "Bearer {cred.token}"}


@pytest.mark.parametrize(
    ("handler", "headers"),
    [
        pytest.param(
            'url = "https://api.example.com/me"\nheaders = { "X-Access" = "{cred.token}" }',
            {"X-Access": "{cred.token}"},
            id="own-header",
        ),
        pytest.param(
            'url = "https://api.example.com/me"\nquery = { access_token = "{cred.token}" }',
            {},
            id="query",
        ),
        pytest.param(
            'method = "POST"\nurl = "https://api.example.com/me"\njson = { auth = { t = "{cred.token}" } }',
            {},
            id="json-body",
        ),
        pytest.param(
            'url = "https://api.example.com/me"\nheaders = { authorization = "token {cred.token}" }',
            {"authorization": "token {cred.token}"},
            id="own-authorization-header",
        ),
    ],
)
def test_no_default_bearer_when_the_declaration_places_the_token(
    tmp_path: Path, handler: str, headers: dict[str, str]
) -> None:
    catalog, _ = load_one(tmp_path, declaration(OAUTH_FIELD, handler=handler))

    assert catalog.problems == ()
    decl_handler = catalog.tools["acme_me"].decl.handler
    assert decl_handler.kind == "http"
    assert decl_handler.headers == headers


def test_no_bearer_header_for_a_type_without_oauth2(tmp_path: Path) -> None:
    catalog, _ = load_one(tmp_path, declaration('{ name = "key", kind = "api_key" }'))

    assert catalog.problems == ()
    handler = catalog.tools["acme_me"].decl.handler
    assert handler.kind == "http"
    assert handler.headers == {}


# -- oauth.py: the state of a stored token ------------------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "margin", "expected"),
    [
        pytest.param({}, 60, "fresh", id="no-expires_at"),
        pytest.param({"refresh_token": "rt"}, 60, "fresh", id="no-expires_at-with-refresh-token"),
        pytest.param({"expires_at": "2099-01-01T00:00:00Z"}, 60, "fresh", id="far-future"),
        pytest.param({"expires_at": at(3600), "refresh_token": "rt"}, 60, "fresh", id="outside-margin"),
        pytest.param({"expires_at": at(30), "refresh_token": "rt"}, 60, "refresh", id="inside-margin-refreshable"),
        pytest.param({"expires_at": at(30)}, 60, "fresh", id="inside-margin-no-refresh-token"),
        pytest.param(  # refused once: expired until new tokens are stored, even with seconds left
            {"expires_at": at(30), "refresh_token": "rt", "refresh_error": "invalid_grant"},
            60,
            "expired",
            id="inside-margin-refresh-error",
        ),
        pytest.param(
            {"expires_at": at(3600), "refresh_token": "rt", "refresh_error": "invalid_grant"},
            60,
            "fresh",
            id="outside-margin-refresh-error",
        ),
        pytest.param({"expires_at": at(30), "refresh_token": "rt"}, 10, "fresh", id="smaller-margin"),
        pytest.param({"expires_at": at(-5), "refresh_token": "rt"}, 60, "refresh", id="past-refreshable"),
        pytest.param({"expires_at": at(-5)}, 60, "expired", id="past-no-refresh-token"),
        pytest.param({"expires_at": at(0)}, 60, "expired", id="expiring-now-no-refresh-token"),
        pytest.param(
            {"expires_at": at(-5), "refresh_token": "rt", "refresh_error": "invalid_grant (x)"},
            60,
            "expired",
            id="past-refresh-error",
        ),
        pytest.param(
            {"expires_at": "2025-06-01T14:00:30+02:00", "refresh_token": "rt"}, 60, "refresh", id="offset-zone"
        ),
        pytest.param({"expires_at": "2025-06-01T11:59:59.500Z"}, 60, "expired", id="fractional-seconds"),
    ],
)
def test_condition(credential: dict[str, str], margin: float, expected: str) -> None:
    assert oauth.condition(credential, NOW, margin) == expected


# -- oauth.py: token responses as credential fields ---------------------------------------------------

DECL = ProviderDecl(
    field="token",
    authorize_url="https://auth.example.com/authorize",
    token_url="https://auth.example.com/token",
    scopes=("read", "write"),
    pkce=True,
    token_auth="client_secret_basic",
    authorize_params={},
)


def test_token_values_rotated_refresh_token_and_computed_expiry() -> None:
    token = OAuthToken(access_token="at-2", expires_in=600, refresh_token="rt-2", scope="read")
    previous = {"token": "at-1", "refresh_token": "rt-1", "scope": "read write", "refresh_error": "invalid_grant"}

    values, drop = oauth.token_values(DECL, token, previous, NOW)

    assert values == {
        "token": "at-2",
        "refresh_token": "rt-2",
        "expires_at": "2025-06-01T12:10:00Z",
        "scope": "read",
        "refreshed_at": "2025-06-01T12:00:00Z",
    }
    assert drop == ["refresh_error"]


def test_token_values_omitted_refresh_token_and_scope_keep_the_old_ones() -> None:
    token = OAuthToken(access_token="at-2", expires_in=60)
    previous = {"token": "at-1", "refresh_token": "rt-1", "scope": "read write", "expires_at": at(5)}

    values, drop = oauth.token_values(DECL, token, previous, NOW)

    assert "refresh_token" not in values and "refresh_token" not in drop  # the stored one stays (RFC 6749 §6)
    assert values["scope"] == "read write"
    assert values["expires_at"] == "2025-06-01T12:01:00Z"
    assert drop == ["refresh_error"]


def test_token_values_without_lifetime_drops_the_old_expiry_and_has_no_empty_scope() -> None:
    token = OAuthToken.model_validate({"access_token": "at-2", "token_type": "bearer"})  # as some providers spell it

    values, drop = oauth.token_values(DECL, token, {"expires_at": at(5)}, NOW)

    assert values == {"token": "at-2", "refreshed_at": "2025-06-01T12:00:00Z"}
    assert sorted(drop) == ["expires_at", "refresh_error"]


def test_token_values_fit_the_declared_fields(tmp_path: Path) -> None:
    """What token_values produces passes the type's own validation (patterns of expires_at / refreshed_at)."""
    catalog, _ = load_one(tmp_path, declaration(OAUTH_FIELD))
    spec = catalog.types["acme"]
    token = OAuthToken(access_token="at-2", expires_in=3600, refresh_token="rt-2", scope="read")

    values, _ = oauth.token_values(DECL, token, {}, datetime.now(UTC))

    assert spec.validate_values({"client_id": "c", **values}, managed=True) == {"client_id": "c", **values}


# -- oauth.py: the authorization request and the redirect back ------------------------------------------


def s256(verifier: str) -> str:
    return urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def test_start_authorization_builds_the_request() -> None:
    provider = ProviderDecl(
        field="token",
        authorize_url="https://auth.example.com/oauth/authorize?tenant=acme&x=1",
        token_url="https://auth.example.com/token",
        scopes=("read", "write"),
        pkce=True,
        token_auth="client_secret_basic",
        authorize_params={"prompt": "consent", "access_type": "offline"},
    )

    request = oauth.start_authorization(provider, "my client", REDIRECT)

    parts = urlsplit(request.url)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
        "https",
        "auth.example.com",
        "/oauth/authorize",
        "",
    )
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    assert pairs[:2] == [("tenant", "acme"), ("x", "1")]  # the existing query stays, first
    query = dict(pairs)
    assert len(query) == len(pairs)  # no parameter twice
    assert query["response_type"] == "code"
    assert query["client_id"] == "my client"
    assert query["redirect_uri"] == REDIRECT
    assert query["state"] == request.state and len(request.state) >= 32
    assert query["scope"] == "read write"
    assert query["code_challenge_method"] == "S256"
    assert request.code_verifier is not None and 43 <= len(request.code_verifier) <= 128
    assert query["code_challenge"] == s256(request.code_verifier)
    assert query["prompt"] == "consent" and query["access_type"] == "offline"
    assert request.redirect_uri == REDIRECT
    assert request.code_verifier not in request.url
    assert request.state not in repr(request) and request.code_verifier not in repr(request)

    again = oauth.start_authorization(provider, "my client", REDIRECT)
    assert again.state != request.state and again.code_verifier != request.code_verifier


def test_start_authorization_without_pkce_or_scopes_and_params_cannot_override() -> None:
    provider = ProviderDecl(
        field="token",
        authorize_url="https://auth.example.com/authorize",
        token_url="https://auth.example.com/token",
        scopes=(),
        pkce=False,
        token_auth="client_secret_basic",
        authorize_params={"state": "fixed", "response_type": "token", "redirect_uri": "https://evil.example"},
    )

    request = oauth.start_authorization(provider, "cid", REDIRECT)

    query = dict(parse_qsl(urlsplit(request.url).query))
    assert request.code_verifier is None
    assert "code_challenge" not in query and "code_challenge_method" not in query and "scope" not in query
    assert query["state"] == request.state != "fixed"
    assert query["response_type"] == "code"
    assert query["redirect_uri"] == REDIRECT


def test_code_from_callback() -> None:
    request = oauth.start_authorization(DECL, "cid", REDIRECT)
    state = request.state

    assert oauth.code_from_callback(request, {"state": state, "code": "the-code"}) == "the-code"

    with pytest.raises(oauth.GrantRefused) as refused:
        oauth.code_from_callback(request, {"state": state, "error": "access_denied", "code": "c"})
    assert refused.value.error == "access_denied"
    assert "access_denied" in str(refused.value)

    with pytest.raises(oauth.GrantRefused) as odd:  # provider text that is not an RFC 6749 error code
        oauth.code_from_callback(request, {"state": state, "error": 'a\nb <script>"x"'})
    assert odd.value.error == "unknown_error"

    with pytest.raises(oauth.OAuthError, match="no authorization code") as empty:
        oauth.code_from_callback(request, {"state": state, "code": ""})
    assert not isinstance(empty.value, oauth.GrantRefused)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"state": "forged", "code": "c"}, id="wrong-state-with-code"),
        pytest.param({"state": "forged", "error": "access_denied"}, id="wrong-state-with-error"),
        pytest.param({"code": "c"}, id="no-state"),
        pytest.param({"state": "", "error": "access_denied"}, id="empty-state-with-error"),
    ],
)
def test_code_from_callback_refuses_a_wrong_state_first(params: dict[str, str]) -> None:
    request = oauth.start_authorization(DECL, "cid", REDIRECT)

    with pytest.raises(oauth.OAuthError, match="state does not match") as refused:
        oauth.code_from_callback(request, params)
    assert not isinstance(refused.value, oauth.GrantRefused)


def test_code_from_callback_refuses_a_state_that_only_starts_alike() -> None:
    request = oauth.start_authorization(DECL, "cid", REDIRECT)

    for forged in (request.state[:-1], request.state + "x", request.state.upper()):
        if forged != request.state:
            with pytest.raises(oauth.OAuthError, match="state does not match"):
                oauth.code_from_callback(request, {"state": forged, "code": "c"})


# -- oauth.py: the token endpoint and client authentication, against the real provider -----------------


@pytest.fixture
def provider() -> Iterator[OAuthProvider]:
    """A confidential client's provider; every code and token it issues starts with a canary."""
    with running_oauth_provider(client_secret=CLIENT_SECRET, token_prefix=make_canary("oauth")) as p:
        yield p


@pytest.fixture
def public_provider() -> Iterator[OAuthProvider]:
    with running_oauth_provider(token_prefix=make_canary("pub")) as p:
        yield p


def decl_for(p: OAuthProvider, token_auth: str = "client_secret_basic", pkce: bool = True) -> ProviderDecl:
    return ProviderDecl(
        field="token",
        authorize_url=p.authorize_url,
        token_url=p.token_url,
        scopes=("read",),
        pkce=pkce,
        token_auth=token_auth,
        authorize_params={},
    )


async def authorized(
    http: httpx2.AsyncClient, decl: ProviderDecl, client_id: str = CLIENT_ID
) -> tuple[oauth.AuthorizationRequest, str]:
    """Run the browser's part against the provider (no redirect followed): the request and its code."""
    request = oauth.start_authorization(decl, client_id, REDIRECT)
    response = await http.get(request.url)
    assert response.status_code == 302, response.text
    params = dict(parse_qsl(urlsplit(response.headers["Location"]).query))
    return request, oauth.code_from_callback(request, params)


@pytest.fixture
async def ahttp() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(trust_env=False, timeout=10, follow_redirects=False) as client:
        yield client


@pytest.mark.anyio
async def test_basic_client_auth_form_urlencodes_id_and_secret(
    provider: OAuthProvider, ahttp: httpx2.AsyncClient
) -> None:
    decl = decl_for(provider)
    client = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    request, code = await authorized(ahttp, decl)

    values, drop = await oauth.exchange_code(ahttp, decl, client, request, code)

    seen = provider.token_requests[-1]
    assert seen["grant_type"] == "authorization_code"
    assert seen["auth_method"] == "client_secret_basic"  # and the provider accepted the decoded secret
    assert "client_secret" not in seen["form"]
    assert seen["form"]["code_verifier"] == request.code_verifier
    assert seen["form"]["redirect_uri"] == REDIRECT
    assert values["token"] == provider.current_access_token
    assert values["refresh_token"] == provider.current_refresh_token
    assert values["scope"] == "read"
    assert "expires_at" in values and drop == ["refresh_error"]

    first_refresh = values["refresh_token"]
    refreshed, _ = await oauth.refresh(ahttp, decl, {**client, **values})

    seen = provider.token_requests[-1]
    assert (seen["grant_type"], seen["auth_method"]) == ("refresh_token", "client_secret_basic")
    assert refreshed["token"] == provider.current_access_token != values["token"]
    assert refreshed["refresh_token"] == provider.current_refresh_token != first_refresh  # rotated: keep the new
    assert not provider.is_valid_refresh_token(first_refresh)


@pytest.mark.anyio
async def test_client_secret_post_puts_the_secret_in_the_body(
    provider: OAuthProvider, ahttp: httpx2.AsyncClient
) -> None:
    decl = decl_for(provider, token_auth="client_secret_post")
    request, code = await authorized(ahttp, decl)

    values, _ = await oauth.exchange_code(
        ahttp, decl, {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, request, code
    )

    seen = provider.token_requests[-1]
    assert seen["auth_method"] == "client_secret_post"
    assert seen["form"]["client_id"] == CLIENT_ID
    assert seen["form"]["client_secret"] == CLIENT_SECRET
    assert values["token"] == provider.current_access_token


@pytest.mark.anyio
async def test_public_client_sends_its_id_only(public_provider: OAuthProvider, ahttp: httpx2.AsyncClient) -> None:
    decl = decl_for(public_provider)
    request, code = await authorized(ahttp, decl)

    values, _ = await oauth.exchange_code(ahttp, decl, {"client_id": CLIENT_ID}, request, code)

    seen = public_provider.token_requests[-1]
    assert seen["auth_method"] == "none"
    assert seen["form"]["client_id"] == CLIENT_ID
    assert "client_secret" not in seen["form"]
    assert values["token"] == public_provider.current_access_token

    public_provider.omit_refresh_token = True
    refreshed, drop = await oauth.refresh(ahttp, decl, {"client_id": CLIENT_ID, **values})
    assert public_provider.token_requests[-1]["auth_method"] == "none"
    assert "refresh_token" not in refreshed and "refresh_token" not in drop  # the stored one stays


@pytest.mark.anyio
async def test_token_endpoint_refusals(provider: OAuthProvider, ahttp: httpx2.AsyncClient) -> None:
    decl = decl_for(provider)
    client = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}

    request, code = await authorized(ahttp, decl)
    wrong = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET + "x"}
    with pytest.raises(oauth.GrantRefused) as bad_client:
        await oauth.exchange_code(ahttp, decl, wrong, request, code)
    assert bad_client.value.error == "invalid_client"

    request, code = await authorized(ahttp, decl)
    other = oauth.start_authorization(decl, CLIENT_ID, REDIRECT)  # another verifier than the challenge's
    with pytest.raises(oauth.GrantRefused) as bad_verifier:
        await oauth.exchange_code(ahttp, decl, client, other, code)
    assert bad_verifier.value.error == "invalid_grant"
    assert code not in str(bad_verifier.value) and CLIENT_SECRET not in str(bad_verifier.value)

    request, code = await authorized(ahttp, decl)
    provider.fail_status = 503
    with pytest.raises(oauth.TokenEndpointUnavailable, match="HTTP 503"):
        await oauth.exchange_code(ahttp, decl, client, request, code)


# -- `credgate cred connect` as a real process ------------------------------------------------------------


@dataclass
class Connecting:
    """A running `credgate cred connect`: its stderr is read as it comes, to find the address to open."""

    proc: subprocess.Popen[str]
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    _address_shown: threading.Event = field(default_factory=threading.Event)
    _pumps: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Connecting:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, False), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, True), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        return self

    def _pump(self, stream: IO[str], sink: list[str], is_stderr: bool) -> None:
        for line in stream:
            sink.append(line)
            if is_stderr and line.startswith("    ") and "://" in line:
                self._address_shown.set()
        if is_stderr:
            self._address_shown.set()  # the process ended without an address: do not wait for one

    @property
    def url(self) -> str:
        """The authorization address, as printed: on its own line, indented four spaces, after the prompt."""
        assert self._address_shown.wait(30), "no address printed"
        lines = list(self.err)
        heads = [i for i, line in enumerate(lines) if line.startswith("Open this address in a browser to connect ")]
        assert heads, "".join(lines)
        following = [line for line in lines[heads[0] + 1 :] if line.strip()]
        assert following and following[0].startswith("    http"), "".join(lines)
        return following[0].strip()

    @property
    def redirect_base(self) -> str:
        """http://127.0.0.1:PORT of the listener (from the redirect_uri in the address)."""
        redirect = dict(parse_qsl(urlsplit(self.url).query))["redirect_uri"]
        parts = urlsplit(redirect)
        assert parts.hostname == "127.0.0.1" and parts.path == "/callback", redirect
        return f"{parts.scheme}://{parts.netloc}"

    def finish(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        returncode = self.proc.wait(timeout)
        for pump in self._pumps:
            pump.join(10)
        return subprocess.CompletedProcess(self.proc.args, returncode, "".join(self.out), "".join(self.err))


StartConnect = Callable[..., Connecting]


@pytest.fixture
def start_connect(home: Path, tools_dir: Path, tmp_path: Path) -> Iterator[StartConnect]:
    """Start `python -m mcp_credgate --home HOME --tools-dir TOOLS cred connect ARGS... --no-browser`.
    `stdin`: text to pipe in (else stdin is /dev/null: not a terminal)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, stdin: str | None = None) -> Connecting:
        command = [
            sys.executable,
            "-m",
            "mcp_credgate",
            "--home",
            str(home),
            "--tools-dir",
            str(tools_dir),
            "cred",
            "connect",
            *args,
            "--no-browser",
        ]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=credgate_env(),
            cwd=tmp_path,
        )
        started.append(proc)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        return Connecting(proc).start()

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def browser() -> Iterator[httpx2.Client]:
    """The browser: follows the provider's redirect into credgate's listener."""
    with httpx2.Client(trust_env=False, timeout=15, follow_redirects=True) as client:
        yield client


@pytest.fixture
def acme(provider: OAuthProvider, tools_dir: Path, store: Store) -> Store:
    """tools.d has `whoami` (type `acme`, oauth2 field `token` at the provider); the store is initialised."""
    write_tool(tools_dir, "whoami.toml", oauth_tool(provider))
    return store


def acme_spec(tools_dir: Path) -> CredentialSpec:
    catalog = load_catalog([tools_dir])
    assert not catalog.problems, catalog.problems
    return catalog.types["acme"]


def stored_names(store: Store) -> list[str]:
    return [c.name for c in store.list_credentials()]


def flow_secrets(provider: OAuthProvider) -> list[str]:
    """Every code, verifier, token and secret the flows so far used (and the canary all codes and tokens
    start with, which catches any of them)."""
    values = [provider.token_prefix, CLIENT_SECRET]
    for seen in provider.token_requests:
        values += [seen["form"][k] for k in ("code", "code_verifier", "refresh_token") if seen["form"].get(k)]
    values += [v for v in (provider.current_access_token, provider.current_refresh_token) if v]
    return values


def assert_failed(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 1, one `Error:` line (the last line of stderr) naming what went wrong, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.stderr.rstrip().splitlines()[-1] == errors[0], result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def completed(result: Result) -> subprocess.CompletedProcess[str]:
    """A CliRunner result in the shape of a finished process (for assert_failed)."""
    return subprocess.CompletedProcess([], result.exit_code, result.stdout, result.stderr)


def connect_with_secret(
    start_connect: StartConnect, browser: httpx2.Client, name: str = "acme1"
) -> tuple[subprocess.CompletedProcess[str], httpx2.Response]:
    """A whole successful connection of a new credential (client id by --set, secret by --from-json -)."""
    running = start_connect(
        name,
        "--tool",
        "whoami",
        "--set",
        f"client_id={CLIENT_ID}",
        "--from-json",
        "-",
        "--json",
        stdin=json.dumps({"client_secret": CLIENT_SECRET}),
    )
    page = browser.get(running.url)
    return running.finish(), page


def test_connect_end_to_end(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client
) -> None:
    running = start_connect(
        "acme1",
        "--tool",
        "whoami",
        "--set",
        f"client_id={CLIENT_ID}",
        "--from-json",
        "-",
        "--json",
        stdin=json.dumps({"client_secret": CLIENT_SECRET}),
    )
    address = running.url
    assert address.startswith(provider.authorize_url + "?")
    assert any(line == "Open this address in a browser to connect acme1:\n" for line in running.err)

    page = browser.get(address)
    result = running.finish()

    assert result.returncode == 0, result.stderr
    assert [r.status_code for r in page.history] == [302]  # the provider's redirect into the listener
    assert page.status_code == 200 and "you can close this tab" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    data = json.loads(result.stdout)
    assert data["connected"] == "acme1" and data["type"] == "acme" and data["created"] is True
    assert data["oauth"]["expired"] is False and data["oauth"]["can_refresh"] is True
    assert data["oauth"]["scope"] == "read" and data["oauth"]["refresh_error"] is None

    # the provider saw PKCE (S256, the verifier matching the challenge) and Basic client authentication
    assert provider.code_requests == 1
    authorize = provider.authorize_requests[-1]
    assert authorize["code_challenge_method"] == "S256"
    assert authorize["scope"] == "read"
    exchange = provider.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["auth_method"] == "client_secret_basic"
    assert pkce_challenge(exchange["form"]["code_verifier"]) == authorize["code_challenge"]
    assert exchange["form"]["redirect_uri"] == authorize["redirect_uri"]

    stored = acme.read_credential("acme1")
    assert stored.type == "acme"
    assert stored["token"] == provider.current_access_token
    assert stored["refresh_token"] == provider.current_refresh_token
    assert stored["client_id"] == CLIENT_ID and stored["client_secret"] == CLIENT_SECRET
    assert stored["scope"] == "read"
    expires = readiness.parse_time(stored["expires_at"])
    assert expires is not None
    assert abs((expires - datetime.now(UTC)).total_seconds() - provider.access_ttl) < 120
    assert "refreshed_at" in stored and "refresh_error" not in stored
    assert data["oauth"]["expires_at"] == stored["expires_at"]

    # no code, verifier, token or client secret in any byte the process wrote, nor in the browser's page
    assert_no_leak(result.stdout + result.stderr, *flow_secrets(provider))
    assert_no_leak(page.text + str(page.headers), *flow_secrets(provider))


def test_connect_owner_makes_a_personal_credential_and_refuses_an_unknown_user(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client
) -> None:
    create_user(acme, "alice")
    refused = start_connect("acme1", "--tool", "whoami", "--set", f"client_id={CLIENT_ID}", "--owner", "nobody")
    assert_failed(refused.finish(), "no user named 'nobody'")

    running = start_connect(
        "acme1",
        "--tool",
        "whoami",
        "--set",
        f"client_id={CLIENT_ID}",
        "--owner",
        "alice",
        "--from-json",
        "-",
        stdin=json.dumps({"client_secret": CLIENT_SECRET}),
    )
    browser.get(running.url)
    result = running.finish()

    assert result.returncode == 0, result.stderr
    assert acme.credential_info("acme1").owner == "alice"
    assert_no_leak(result.stdout + result.stderr, *flow_secrets(provider))


def test_connect_keeps_tokens_encrypted_at_rest(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client, settings: Settings
) -> None:
    result, _ = connect_with_secret(start_connect, browser)
    assert result.returncode == 0, result.stderr
    acme.close()  # nothing held open: -wal / -shm are whatever the process left

    assert_no_leak_at_rest(settings, *flow_secrets(provider))


def test_connect_human_output_and_public_client(
    provider: OAuthProvider,
    public_provider: OAuthProvider,
    tools_dir: Path,
    store: Store,
    start_connect: StartConnect,
    browser: httpx2.Client,
) -> None:
    write_tool(tools_dir, "pubwho.toml", oauth_tool(public_provider, "pubwho", type_name="pub"))
    running = start_connect("pub1", "--type", "pub", "--set", f"client_id={CLIENT_ID}")
    browser.get(running.url)
    result = running.finish()

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("connected credential pub1 (type pub), expires at ")
    assert "scope: read" in result.stdout
    assert public_provider.token_requests[-1]["auth_method"] == "none"
    stored = store.read_credential("pub1")
    assert "client_secret" not in stored
    assert stored["token"] == public_provider.current_access_token
    assert_no_leak(result.stdout + result.stderr, *flow_secrets(public_provider))


def test_reconnect_keeps_the_client_and_replaces_the_tokens(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client, tools_dir: Path
) -> None:
    first, _ = connect_with_secret(start_connect, browser)
    assert first.returncode == 0, first.stderr
    before = acme.read_credential("acme1")
    spec = acme_spec(tools_dir)
    refused = spec.validate_values(
        {"refresh_error": "invalid_grant (2025-06-01T12:00:00Z)"}, complete=False, managed=True
    )
    acme.update_credential("acme1", refused, spec.secret_fields)  # as the gateway notes a refused refresh
    assert acme.read_credential("acme1")["refresh_error"].startswith("invalid_grant")

    running = start_connect("acme1", "--tool", "whoami", "--json")  # no client id given: the stored one is used
    browser.get(running.url)
    result = running.finish()

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["created"] is False and data["oauth"]["can_refresh"] is True
    assert data["oauth"]["refresh_error"] is None
    assert provider.code_requests == 2
    assert provider.token_requests[-1]["auth_method"] == "client_secret_basic"  # with the stored secret
    after = acme.read_credential("acme1")
    assert after.uid == before.uid
    assert after["client_id"] == CLIENT_ID and after["client_secret"] == CLIENT_SECRET
    assert after["token"] == provider.current_access_token != before["token"]
    assert after["refresh_token"] == provider.current_refresh_token != before["refresh_token"]
    assert "refresh_error" not in after
    assert_no_leak(first.stdout + first.stderr + result.stdout + result.stderr, *flow_secrets(provider))


def test_a_reconnect_without_a_refresh_token_drops_the_old_one(
    acme: Store,
    provider: OAuthProvider,
    start_connect: StartConnect,
    browser: httpx2.Client,
    tools_dir: Path,
    run_credgate: ProcRun,
) -> None:
    """A reconnect whose token response has no refresh_token must not keep the refresh token of the grant it
    replaces (right for a refresh, RFC 6749 §6, not for a new authorization): else `cred show` would say it can
    refresh, and the next refresh would send the old grant's token."""
    first, _ = connect_with_secret(start_connect, browser)
    assert first.returncode == 0, first.stderr
    spec = acme_spec(tools_dir)
    acme.update_credential(
        "acme1",
        spec.validate_values({"refresh_error": "invalid_grant (2025-06-01T12:00:00Z)"}, complete=False, managed=True),
        spec.secret_fields,
    )

    provider.omit_refresh_token = True  # the provider no longer issues refresh tokens to this client
    running = start_connect("acme1", "--tool", "whoami")
    browser.get(running.url)
    assert running.finish().returncode == 0

    shown = run_credgate("cred", "show", "acme1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["oauth"]["can_refresh"] is False
    assert "refresh_token" not in acme.read_credential("acme1")


def test_connect_refuses_a_wrong_state(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client
) -> None:
    running = start_connect(
        "acme1",
        "--tool",
        "whoami",
        "--set",
        f"client_id={CLIENT_ID}",
        "--from-json",
        "-",
        stdin=json.dumps({"client_secret": CLIENT_SECRET}),
    )
    to_listener = browser.get(running.url, follow_redirects=False)
    assert to_listener.status_code == 302
    parts = urlsplit(to_listener.headers["Location"])
    query = dict(parse_qsl(parts.query))
    assert query["code"].startswith(provider.token_prefix)
    real_state = query["state"]
    query["state"] = "forged-" + real_state[7:]
    page = browser.get(urlunsplit(parts._replace(query=urlencode(query))))

    assert page.status_code == 400 and "does not belong" in page.text
    assert provider.code_requests == 0  # the forged redirect's code was never exchanged
    assert stored_names(acme) == []
    # the flow goes on: a foreign redirect (another page, another process) cannot abort it
    real = browser.get(to_listener.headers["Location"])
    result = running.finish()

    assert real.status_code == 200
    assert result.returncode == 0, result.stderr
    assert "refused a redirect whose state is not this connection's" in result.stderr
    assert stored_names(acme) == ["acme1"] and provider.code_requests == 1
    assert_no_leak(result.stdout + result.stderr + page.text, query["code"], *flow_secrets(provider))


def test_connect_with_only_a_forged_redirect_stores_nothing(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client
) -> None:
    running = start_connect(
        "acme1",
        "--tool",
        "whoami",
        "--set",
        f"client_id={CLIENT_ID}",
        "--from-json",
        "-",
        "--timeout",
        "3",
        stdin=json.dumps({"client_secret": CLIENT_SECRET}),
    )
    parts = urlsplit(browser.get(running.url, follow_redirects=False).headers["Location"])
    query = dict(parse_qsl(parts.query)) | {"state": "forged"}
    page = browser.get(urlunsplit(parts._replace(query=urlencode(query))))
    result = running.finish()

    assert page.status_code == 400
    assert_failed(result, "1 redirect(s) with a foreign state refused", "nothing stored")
    assert provider.code_requests == 0 and stored_names(acme) == []


def test_connect_refuses_a_pkce_mismatch(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client
) -> None:
    running = start_connect(
        "acme1",
        "--tool",
        "whoami",
        "--set",
        f"client_id={CLIENT_ID}",
        "--from-json",
        "-",
        stdin=json.dumps({"client_secret": CLIENT_SECRET}),
    )
    parts = urlsplit(running.url)
    query = dict(parse_qsl(parts.query))
    query["code_challenge"] = pkce_challenge("x" * 64)  # an attacker's challenge: credgate's verifier won't fit
    page = browser.get(urlunsplit(parts._replace(query=urlencode(query))))
    result = running.finish()

    assert page.status_code == 200  # the listener got a well-formed answer; the token endpoint refuses it
    assert_failed(result, "invalid_grant")
    assert provider.code_requests == 1
    assert provider.token_requests[-1]["auth_method"] == "client_secret_basic"
    assert stored_names(acme) == []
    assert_no_leak(result.stdout + result.stderr, *flow_secrets(provider))


def test_connect_reports_a_denial(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client
) -> None:
    provider.deny = True
    running = start_connect("acme1", "--tool", "whoami", "--set", f"client_id={CLIENT_ID}")
    page = browser.get(running.url)
    result = running.finish()

    assert page.status_code == 400 and "did not grant access" in page.text
    assert_failed(result, "access_denied")
    assert provider.code_requests == 0
    assert stored_names(acme) == []


def test_connect_times_out_without_a_browser(acme: Store, provider: OAuthProvider, start_connect: StartConnect) -> None:
    running = start_connect("acme1", "--tool", "whoami", "--set", f"client_id={CLIENT_ID}", "--timeout", "1")
    assert running.url.startswith(provider.authorize_url)
    result = running.finish(timeout=20)

    assert_failed(result, "no answer from the browser within 1 s", "nothing stored")
    assert provider.authorize_requests == [] and provider.token_requests == []
    assert stored_names(acme) == []


def test_listener_answers_other_paths_404_and_keeps_waiting(
    acme: Store, provider: OAuthProvider, start_connect: StartConnect, browser: httpx2.Client
) -> None:
    port = closed_port()
    running = start_connect(
        "acme1",
        "--tool",
        "whoami",
        "--set",
        f"client_id={CLIENT_ID}",
        "--from-json",
        "-",
        "--port",
        str(port),
        stdin=json.dumps({"client_secret": CLIENT_SECRET}),
    )
    base = running.redirect_base
    assert base == f"http://127.0.0.1:{port}"

    for path in ("/", "/favicon.ico", "/callbackx", "/callback/"):
        stray = browser.get(base + path)
        assert stray.status_code == 404, path
    assert running.proc.poll() is None  # still waiting
    page = browser.get(running.url)
    result = running.finish()

    assert page.status_code == 200
    assert result.returncode == 0, result.stderr
    assert acme.read_credential("acme1")["token"] == provider.current_access_token
    assert_no_leak(result.stdout + result.stderr, *flow_secrets(provider))


def test_connect_without_client_id_and_no_terminal(acme: Store, run_credgate: ProcRun) -> None:
    result = run_credgate("cred", "connect", "acme1", "--tool", "whoami", "--no-browser", input="")

    assert_failed(result, "client id is missing", "--set client_id=ID")
    assert "Open this address" not in result.stderr  # refused before listening
    assert stored_names(acme) == []


def test_connect_refusals_before_listening(acme: Store, run_credgate: ProcRun) -> None:
    no_oauth = run_credgate(
        "cred", "connect", "wk", "--type", "weatherkey", "--set", "client_id=x", "--no-browser", input=""
    )
    assert_failed(no_oauth, "type 'weatherkey' has no oauth2 field")

    both = run_credgate("cred", "connect", "c", "--type", "acme", "--tool", "whoami", "--no-browser", input="")
    assert both.returncode == 2 and "Traceback" not in both.stderr

    managed = run_credgate(
        "cred",
        "connect",
        "c",
        "--tool",
        "whoami",
        "--set",
        "client_id=x",
        "--set",
        "refresh_error=no",
        "--no-browser",
        input="",
    )
    assert_failed(managed, "'refresh_error' is kept by credgate")

    added = run_credgate("cred", "add", "wk", "--type", "weatherkey", "--set", "api_key=wk_0123456789abcdef")
    assert added.returncode == 0, added.stderr
    other_type = run_credgate(
        "cred", "connect", "wk", "--tool", "whoami", "--set", "client_id=x", "--no-browser", input=""
    )
    assert_failed(other_type, "credential 'wk' has type 'weatherkey', not 'acme'")
    assert stored_names(acme) == ["wk"]


def test_connect_refuses_a_port_in_use(acme: Store, run_credgate: ProcRun) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_credgate(
            "cred",
            "connect",
            "acme1",
            "--tool",
            "whoami",
            "--set",
            f"client_id={CLIENT_ID}",
            "--port",
            str(port),
            "--no-browser",
            input="",
        )

    assert_failed(result, f"cannot listen on 127.0.0.1:{port}")
    assert stored_names(acme) == []


# -- existing tokens: cred add / update / show, group show ------------------------------------------------


@pytest.fixture
def tokens() -> dict[str, str]:
    return {
        "token": make_canary("at", rich=True),
        "refresh_token": make_canary("rt", rich=True),
        "client_secret": make_canary("cs"),
    }


def test_cred_add_from_json_of_existing_tokens_and_show(
    acme: Store, run_credgate: ProcRun, tokens: dict[str, str]
) -> None:
    values = {"client_id": "cid-1", "expires_at": "2030-01-01T00:00:00Z", "scope": "read write", **tokens}

    added = run_credgate("cred", "add", "acme1", "--tool", "whoami", "--from-json", "-", input=json.dumps(values))
    assert added.returncode == 0, added.stderr
    assert dict(acme.read_credential("acme1")) == values

    shown = run_credgate("cred", "show", "acme1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"    token = {mask(tokens['token'])}" in lines
    assert f"    refresh_token = {mask(tokens['refresh_token'])}" in lines
    assert f"    client_secret = {mask(tokens['client_secret'])}" in lines
    assert "    client_id = cid-1" in lines and "    expires_at = 2030-01-01T00:00:00Z" in lines
    assert "    oauth2: access token valid until 2030-01-01T00:00:00Z; scope: read write; last refresh: never" in lines

    as_json = run_credgate("cred", "show", "acme1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["values"]["token"] == mask(tokens["token"])
    assert data["oauth"] == {
        "expires_at": "2030-01-01T00:00:00Z",
        "expired": False,
        "can_refresh": True,
        "scope": "read write",
        "refreshed_at": None,
        "refresh_error": None,
    }
    assert_no_leak(added.stdout + added.stderr + shown.stdout + as_json.stdout, *tokens.values())


def test_cred_show_of_an_expired_token_without_refresh(acme: Store, run_credgate: ProcRun) -> None:
    values = {"client_id": "cid-1", "token": make_canary("at"), "expires_at": "2020-01-01T00:00:00Z"}
    assert (
        run_credgate("cred", "add", "old", "--tool", "whoami", "--from-json", "-", input=json.dumps(values)).returncode
        == 0
    )

    shown = run_credgate("cred", "show", "old")
    data = json.loads(run_credgate("cred", "show", "old", "--json").stdout)

    assert shown.returncode == 0, shown.stderr
    assert (
        "    oauth2: EXPIRED at 2020-01-01T00:00:00Z: reconnect with `credgate cred connect`; "
        "no refresh token; scope: -; last refresh: never"
    ) in shown.stdout.splitlines()
    assert data["oauth"]["expired"] is True and data["oauth"]["can_refresh"] is False
    assert_no_leak(shown.stdout, values["token"])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({"refreshed_at": "2025-01-01T00:00:00Z"}, "'refreshed_at' is kept by credgate", id="refreshed_at"),
        pytest.param({"refresh_error": "x"}, "'refresh_error' is kept by credgate", id="refresh_error"),
        pytest.param({"expires_at": "2030-01-01 00:00:00"}, "'expires_at'", id="space-not-T"),
        pytest.param({"expires_at": "2030-01-01T00:00:00"}, "'expires_at'", id="no-zone"),
        pytest.param({"expires_at": "tomorrow"}, "'expires_at'", id="words"),
        pytest.param({"expires_at": "1735689600"}, "'expires_at'", id="epoch"),
        pytest.param({"client_id": ""}, "'client_id'", id="empty-client-id"),
        pytest.param({"token": ""}, "'token'", id="empty-token"),
    ],
)
def test_cred_add_refusals(
    acme: Store, run_cli: CliRun, tokens: dict[str, str], extra: dict[str, str], expected: str
) -> None:
    values = {"client_id": "cid-1", "token": tokens["token"], **extra}

    result = completed(
        run_cli("cred", "add", "acme1", "--tool", "whoami", "--from-json", "-", input=json.dumps(values))
    )

    assert_failed(result, expected)
    assert stored_names(acme) == []
    assert_no_leak(result.stderr, tokens["token"])


def test_cred_add_refuses_an_impossible_expiry(acme: Store, run_cli: CliRun) -> None:
    """An expiry of the right shape but no real date (`2020-02-30`) is refused: read as no expiry, it would make
    the token fresh for ever."""
    values = {"client_id": "cid-1", "token": "at-1", "expires_at": "2020-02-30T00:00:00Z"}

    result = run_cli("cred", "add", "bad", "--tool", "whoami", "--from-json", "-", input=json.dumps(values))

    assert result.exit_code == 1, result.output
    assert stored_names(acme) == []


def test_cred_update_refuses_managed_fields(acme: Store, run_credgate: ProcRun) -> None:
    values = {"client_id": "cid-1", "token": "at-1"}
    assert (
        run_credgate(
            "cred", "add", "acme1", "--tool", "whoami", "--from-json", "-", input=json.dumps(values)
        ).returncode
        == 0
    )

    for name in ("refresh_error", "refreshed_at"):
        refused = run_credgate("cred", "update", "acme1", "--set", f"{name}=2025-01-01T00:00:00Z")
        assert_failed(refused, f"'{name}' is kept by credgate")
    assert dict(acme.read_credential("acme1")) == values


def set_refresh_error(store: Store, spec: CredentialSpec, name: str) -> None:
    """What the gateway writes when the token endpoint refuses the refresh token."""
    values = spec.validate_values(
        {"refresh_error": "invalid_grant (2025-06-01T12:00:00Z)"}, complete=False, managed=True
    )
    store.update_credential(name, values, spec.secret_fields)


@pytest.mark.parametrize(
    ("field_name", "clears"),
    [("token", True), ("refresh_token", True), ("client_id", False), ("scope", False)],
)
def test_cred_update_of_a_token_clears_refresh_error(
    acme: Store, run_cli: CliRun, tools_dir: Path, field_name: str, clears: bool
) -> None:
    values = {"client_id": "cid-1", "token": "at-1", "refresh_token": "rt-1", "expires_at": "2020-01-01T00:00:00Z"}
    added = run_cli("cred", "add", "acme1", "--tool", "whoami", "--from-json", "-", input=json.dumps(values))
    assert added.exit_code == 0, added.output
    set_refresh_error(acme, acme_spec(tools_dir), "acme1")

    updated = run_cli("cred", "update", "acme1", "--set", f"{field_name}=new-value-1")

    assert updated.exit_code == 0, updated.output
    stored = acme.read_credential("acme1")
    assert stored[field_name] == "new-value-1"
    assert ("refresh_error" not in stored) is clears
    assert stored["refresh_token"] == ("new-value-1" if field_name == "refresh_token" else "rt-1")


@pytest.mark.parametrize(
    ("values", "refused", "status"),
    [
        pytest.param({"expires_at": "2020-01-01T00:00:00Z"}, False, "expired", id="expired-no-refresh-token"),
        pytest.param(
            {"expires_at": "2020-01-01T00:00:00Z", "refresh_token": "rt-1"},
            True,
            "expired",
            id="expired-refresh-refused",
        ),
        pytest.param(
            {"expires_at": "2020-01-01T00:00:00Z", "refresh_token": "rt-1"},
            False,
            "ready",
            id="expired-but-refreshable",
        ),
        pytest.param({"expires_at": "2099-01-01T00:00:00Z"}, False, "ready", id="valid-no-refresh-token"),
        pytest.param(
            {"expires_at": "2099-01-01T00:00:00Z", "refresh_token": "rt-1"}, True, "ready", id="valid-refresh-refused"
        ),
        pytest.param({}, False, "ready", id="no-expiry"),
    ],
)
def test_group_show_status_of_a_bound_oauth2_credential(
    acme: Store, run_cli: CliRun, tools_dir: Path, values: Mapping[str, str], refused: bool, status: str
) -> None:
    token = make_canary("at")
    added = run_cli(
        "cred",
        "add",
        "acme1",
        "--tool",
        "whoami",
        "--from-json",
        "-",
        input=json.dumps({"client_id": "cid-1", "token": token, **values}),
    )
    assert added.exit_code == 0, added.output
    if refused:
        set_refresh_error(acme, acme_spec(tools_dir), "acme1")
    for args in (("group", "add", "ops"), ("group", "allow", "ops", "whoami"), ("bind", "ops", "whoami", "acme1")):
        done = run_cli(*args)
        assert done.exit_code == 0, done.output

    shown = run_cli("group", "show", "ops", "--json")
    text = run_cli("group", "show", "ops")

    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["tools"] == [
        {
            "tool": "whoami",
            "status": status,
            "credential": "acme1",
            "credential_type": "acme",
            "missing_fields": [],
            "scope": "shared",
            "approval": None,
        }
    ]
    if status == "expired":
        assert "whoami  expired (reconnect with `credgate cred connect`)  credential acme1" in text.stdout
    assert_no_leak(shown.stdout + text.stdout, token)


def test_group_show_as_a_real_process_reports_expired(acme: Store, run_credgate: ProcRun) -> None:
    values = {"client_id": "cid-1", "token": "at-1", "expires_at": "2020-01-01T00:00:00Z"}
    steps: list[tuple[tuple[str, ...], str | None]] = [
        (("cred", "add", "acme1", "--tool", "whoami", "--from-json", "-"), json.dumps(values)),
        (("group", "add", "ops"), None),
        (("group", "allow", "ops", "whoami"), None),
        (("bind", "ops", "whoami", "acme1"), None),
    ]
    for args, stdin in steps:
        done = run_credgate(*args, input=stdin)
        assert done.returncode == 0, done.stderr

    shown = run_credgate("group", "show", "ops", "--json")

    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tools"][0]["status"] == "expired"
