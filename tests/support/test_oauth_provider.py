"""Self-test of the local OAuth2 provider (`oauth_provider.py`), over real HTTP with httpx2."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx2
import pytest

from tests.support.oauth_provider import OAuthProvider, pkce_challenge, running_oauth_provider

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend

SECRET = "s3cr:t/+ &é%"  # characters the form-urlencoding of Basic credentials changes
REDIRECT = "http://127.0.0.1:53682/callback"


@pytest.fixture
def provider() -> Iterator[OAuthProvider]:
    with running_oauth_provider(client_secret=SECRET, token_prefix="cnryoauth") as p:
        yield p


@pytest.fixture
def public() -> Iterator[OAuthProvider]:
    with running_oauth_provider() as p:
        yield p


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=5.0) as client:
        yield client


def basic(client_id: str, secret: str) -> dict[str, str]:
    """An Authorization: Basic header with both parts form-urlencoded first (RFC 6749 §2.3.1)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def authorize(
    http: httpx2.Client, p: OAuthProvider, verifier: str, *, redirect_uri: str = REDIRECT, **extra: str
) -> httpx2.Response:
    params = {
        "response_type": "code",
        "client_id": p.client_id,
        "redirect_uri": redirect_uri,
        "state": "st-" + secrets.token_urlsafe(8),
        "scope": "read write",
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    return http.get(p.authorize_url, params=params)


def redirect_params(response: httpx2.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}


def get_code(http: httpx2.Client, p: OAuthProvider, verifier: str) -> str:
    return redirect_params(authorize(http, p, verifier))["code"]


def exchange(http: httpx2.Client, p: OAuthProvider, code: str, verifier: str, **form: str) -> httpx2.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    if p.client_secret is not None:
        return http.post(p.token_url, data={**data, **form}, headers=basic(p.client_id, p.client_secret))
    return http.post(p.token_url, data={**data, "client_id": p.client_id, **form})


def refresh(http: httpx2.Client, p: OAuthProvider, token: str, **form: str) -> httpx2.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, **form}
    assert p.client_secret is not None
    return http.post(p.token_url, data=data, headers=basic(p.client_id, p.client_secret))


def whoami(http: httpx2.Client, p: OAuthProvider, token: str) -> httpx2.Response:
    return http.get(p.api_url, headers={"Authorization": f"Bearer {token}"})


def error_of(response: httpx2.Response) -> Any:
    return response.json()["error"]


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


# -- authorize ---------------------------------------------------------------------------------------


def test_addresses_are_loopback(provider: OAuthProvider) -> None:
    assert provider.base.startswith("http://127.0.0.1:") and provider.port > 0
    assert provider.authorize_url == provider.base + "/authorize"
    assert provider.token_url == provider.base + "/token"
    assert provider.api_url == provider.base + "/api/whoami"


def test_authorize_redirects_with_code_and_state_echoed(provider: OAuthProvider, http: httpx2.Client) -> None:
    state = "a b&c=d/é+"
    response = authorize(http, provider, new_verifier(), state=state)
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    params = redirect_params(response)
    assert params["state"] == state
    assert params["code"].startswith("cnryoauth-code-")
    assert provider.authorize_requests[-1]["state"] == state
    assert provider.authorize_requests[-1]["code_challenge_method"] == "S256"


def test_authorize_appends_to_an_existing_query(provider: OAuthProvider, http: httpx2.Client) -> None:
    response = authorize(http, provider, new_verifier(), redirect_uri="http://localhost:9/cb?x=1", state="s1")
    location = response.headers["Location"]
    assert location.startswith("http://localhost:9/cb?x=1&")
    assert parse_qs(urlsplit(location).query)["state"] == ["s1"]


def test_deny_switch(provider: OAuthProvider, http: httpx2.Client) -> None:
    provider.deny = True
    params = redirect_params(authorize(http, provider, new_verifier(), state="keep-me"))
    assert params == {"error": "access_denied", "state": "keep-me"}
    provider.deny = False
    assert "code" in redirect_params(authorize(http, provider, new_verifier()))


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example/cb",
        "http://evil.example:8080/cb",
        "http://127.0.0.1/cb",  # no port
        "http://127.0.0.1.evil.example:80/cb",
        "http://user@127.0.0.1:80/cb",
        "https://127.0.0.1:80/cb",
        "http://127.0.0.1:80/cb#frag",
        "",
    ],
)
def test_non_loopback_redirect_uri_refused_without_redirect(
    provider: OAuthProvider, http: httpx2.Client, uri: str
) -> None:
    response = authorize(http, provider, new_verifier(), redirect_uri=uri)
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_unknown_client_refused_without_redirect(provider: OAuthProvider, http: httpx2.Client) -> None:
    response = authorize(http, provider, new_verifier(), client_id="someone-else")
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_plain_pkce_and_bad_response_type_refused(provider: OAuthProvider, http: httpx2.Client) -> None:
    verifier = new_verifier()
    plain = redirect_params(authorize(http, provider, verifier, code_challenge=verifier, code_challenge_method="plain"))
    assert plain["error"] == "invalid_request" and "code" not in plain
    token = redirect_params(authorize(http, provider, verifier, response_type="token"))
    assert token["error"] == "unsupported_response_type" and "code" not in token


# -- code exchange -----------------------------------------------------------------------------------


def test_code_exchange_with_pkce(provider: OAuthProvider, http: httpx2.Client) -> None:
    verifier = new_verifier()
    code = get_code(http, provider, verifier)
    response = exchange(http, provider, code, verifier)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "read write"
    assert body["access_token"].startswith("cnryoauth-at-") and body["refresh_token"].startswith("cnryoauth-rt-")
    assert provider.current_access_token == body["access_token"]
    assert provider.current_refresh_token == body["refresh_token"]
    assert whoami(http, provider, body["access_token"]).json()["scope"] == "read write"
    # the same code again
    again = exchange(http, provider, code, verifier)
    assert again.status_code == 400 and error_of(again) == "invalid_grant"


def test_wrong_verifier_is_invalid_grant(provider: OAuthProvider, http: httpx2.Client) -> None:
    verifier = new_verifier()
    code = get_code(http, provider, verifier)
    response = exchange(http, provider, code, new_verifier())
    assert response.status_code == 400 and error_of(response) == "invalid_grant"
    assert provider.current_access_token is None


def test_redirect_uri_must_match(provider: OAuthProvider, http: httpx2.Client) -> None:
    verifier = new_verifier()
    code = get_code(http, provider, verifier)
    response = exchange(http, provider, code, verifier, redirect_uri="http://127.0.0.1:53682/other")
    assert response.status_code == 400 and error_of(response) == "invalid_grant"


def test_public_client_needs_no_secret(public: OAuthProvider, http: httpx2.Client) -> None:
    verifier = new_verifier()
    response = exchange(http, public, get_code(http, public, verifier), verifier)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"].startswith("tok-at-")
    assert public.token_requests[-1]["auth_method"] == "none"


# -- client authentication ---------------------------------------------------------------------------


def test_basic_and_post_client_auth_accepted(provider: OAuthProvider, http: httpx2.Client) -> None:
    pair = provider.issue_tokens()
    data = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    by_basic = http.post(provider.token_url, data=data, headers=basic(provider.client_id, SECRET))
    assert by_basic.status_code == 200, by_basic.text
    data["refresh_token"] = by_basic.json()["refresh_token"]
    by_post = http.post(provider.token_url, data={**data, "client_id": provider.client_id, "client_secret": SECRET})
    assert by_post.status_code == 200, by_post.text
    assert [r["auth_method"] for r in provider.token_requests] == ["client_secret_basic", "client_secret_post"]
    assert provider.token_requests[1]["form"]["client_id"] == provider.client_id


def test_wrong_or_missing_secret_is_invalid_client(provider: OAuthProvider, http: httpx2.Client) -> None:
    pair = provider.issue_tokens()
    data = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    attempts = [
        http.post(provider.token_url, data=data, headers=basic(provider.client_id, "wrong")),
        # the secret not form-urlencoded inside Basic: not the secret
        http.post(provider.token_url, data=data, auth=(provider.client_id, SECRET)),
        http.post(provider.token_url, data={**data, "client_id": provider.client_id, "client_secret": "wrong"}),
        http.post(provider.token_url, data={**data, "client_id": provider.client_id}),  # confidential, no secret
        http.post(provider.token_url, data={**data, "client_id": "stranger", "client_secret": SECRET}),
    ]
    for response in attempts:
        assert response.status_code == 401, response.text
        assert error_of(response) == "invalid_client"
    assert attempts[0].headers["WWW-Authenticate"].startswith("Basic")
    assert provider.refresh_requests == len(attempts)
    assert provider.is_valid_refresh_token(pair["refresh_token"])  # failed auth consumed nothing


# -- refresh -------------------------------------------------------------------------------------------


def test_refresh_rotates_and_old_token_fails(provider: OAuthProvider, http: httpx2.Client) -> None:
    first = provider.issue_tokens("read write")
    response = refresh(http, provider, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"] and second["scope"] == "read write"
    assert provider.current_refresh_token == second["refresh_token"]
    old = refresh(http, provider, first["refresh_token"])
    assert old.status_code == 400 and error_of(old) == "invalid_grant"
    narrower = refresh(http, provider, second["refresh_token"], scope="read")
    assert narrower.status_code == 200 and narrower.json()["scope"] == "read"
    wider = refresh(http, provider, narrower.json()["refresh_token"], scope="read write admin")
    assert wider.status_code == 400 and error_of(wider) == "invalid_scope"


def test_refresh_without_rotation_keeps_the_token(http: httpx2.Client) -> None:
    with running_oauth_provider(client_secret=SECRET, rotate_refresh=False) as p:
        pair = p.issue_tokens()
        for _ in range(2):
            response = refresh(http, p, pair["refresh_token"])
            assert response.status_code == 200, response.text
            assert "refresh_token" not in response.json()
        assert p.current_refresh_token == pair["refresh_token"]


def test_omit_refresh_token_switch(provider: OAuthProvider, http: httpx2.Client) -> None:
    provider.omit_refresh_token = True
    verifier = new_verifier()
    body = exchange(http, provider, get_code(http, provider, verifier), verifier).json()
    assert "access_token" in body and "refresh_token" not in body


def test_invalid_grant_switch(provider: OAuthProvider, http: httpx2.Client) -> None:
    pair = provider.issue_tokens()
    provider.invalid_grant = True
    response = refresh(http, provider, pair["refresh_token"])
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant" and response.json()["error_description"]
    provider.invalid_grant = False
    assert refresh(http, provider, pair["refresh_token"]).status_code == 200


def test_fail_status_switch(provider: OAuthProvider, http: httpx2.Client) -> None:
    pair = provider.issue_tokens()
    provider.fail_status = 503
    response = refresh(http, provider, pair["refresh_token"])
    assert response.status_code == 503 and error_of(response) == "temporarily_unavailable"
    code_try = exchange(http, provider, "nope", new_verifier())
    assert code_try.status_code == 503
    provider.fail_status = None
    assert refresh(http, provider, pair["refresh_token"]).status_code == 200
    assert provider.refresh_requests == 2 and provider.code_requests == 1


def test_unknown_grant_type(provider: OAuthProvider, http: httpx2.Client) -> None:
    response = http.post(provider.token_url, data={"grant_type": "password"}, headers=basic(provider.client_id, SECRET))
    assert response.status_code == 400 and error_of(response) == "unsupported_grant_type"
    assert provider.token_requests[-1]["grant_type"] == "password"


def test_token_delay_holds_the_answer(provider: OAuthProvider, http: httpx2.Client) -> None:
    pair = provider.issue_tokens()
    provider.token_delay = 0.3
    started = time.monotonic()
    assert refresh(http, provider, pair["refresh_token"]).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_concurrent_refresh_with_rotation_only_one_wins(provider: OAuthProvider) -> None:
    pair = provider.issue_tokens()
    provider.token_delay = 0.2
    statuses: list[int] = []

    def one() -> None:
        with httpx2.Client(trust_env=False, timeout=5.0) as client:
            statuses.append(refresh(client, provider, pair["refresh_token"]).status_code)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 400, 400]
    assert provider.refresh_requests == 3


# -- the protected API ---------------------------------------------------------------------------------


def test_whoami_accepts_only_issued_unexpired_tokens(provider: OAuthProvider, http: httpx2.Client) -> None:
    pair = provider.issue_tokens("read")
    ok = whoami(http, provider, pair["access_token"])
    assert ok.status_code == 200
    assert ok.json() == {"ok": True, "scope": "read", "token_suffix": pair["access_token"][-4:]}
    for bad in [pair["refresh_token"], pair["access_token"] + "x", "cnryoauth-at-made-up"]:
        response = whoami(http, provider, bad)
        assert response.status_code == 401 and error_of(response) == "invalid_token"
        assert "invalid_token" in response.headers["WWW-Authenticate"]
    missing = http.get(provider.api_url)
    assert missing.status_code == 401 and "WWW-Authenticate" in missing.headers
    assert provider.api_calls == 5


def test_expire_access_tokens(provider: OAuthProvider, http: httpx2.Client) -> None:
    old = provider.issue_tokens()
    provider.expire_access_tokens()
    assert whoami(http, provider, old["access_token"]).status_code == 401
    fresh = refresh(http, provider, old["refresh_token"]).json()
    assert whoami(http, provider, fresh["access_token"]).status_code == 200
    assert whoami(http, provider, old["access_token"]).status_code == 401


def test_access_ttl_sets_expiry_server_side(http: httpx2.Client) -> None:
    with running_oauth_provider(access_ttl=0) as p:  # expires the moment it is issued
        pair = p.issue_tokens()
        assert pair["expires_in"] == 0
        assert whoami(http, p, pair["access_token"]).status_code == 401


# -- counters ----------------------------------------------------------------------------------------


def test_counters_count_every_request(provider: OAuthProvider, http: httpx2.Client) -> None:
    verifier = new_verifier()
    code = get_code(http, provider, verifier)
    exchange(http, provider, code, "x" * 43)  # fails: wrong verifier
    exchange(http, provider, code, verifier)  # fails: used
    good = exchange(http, provider, get_code(http, provider, verifier), verifier).json()
    refresh(http, provider, good["refresh_token"])
    refresh(http, provider, good["refresh_token"])  # fails: rotated away
    whoami(http, provider, good["access_token"])
    assert provider.code_requests == 3
    assert provider.refresh_requests == 2
    assert provider.api_calls == 1
    assert len(provider.authorize_requests) == 2
    assert [r["grant_type"] for r in provider.token_requests] == ["authorization_code"] * 3 + ["refresh_token"] * 2
    assert provider.token_requests[0]["form"]["code"] == code
