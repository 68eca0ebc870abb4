"""The relying party's side of OpenID Connect: settings, discovery, and every check of an ID token, with keys
made here (RSA and EC pairs, published as a JWKS) and a provider answering through httpx2's MockTransport."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from mcp_credgate import sso
from mcp_credgate.sso import (
    Flow,
    Identity,
    IdTokenError,
    SsoClient,
    SsoError,
    SsoSettings,
    UnknownKeyError,
    new_flow,
    parse_metadata,
    pkce_challenge,
    user_name_hint,
    verify_id_token,
)

pytestmark = pytest.mark.no_store

ISSUER = "https://login.example.com"
CLIENT_ID = "credgate-dashboard"
CLIENT_SECRET = "cs-" + "s" * 40
NONCE = "the-nonce-of-this-sign-in"
REDIRECT = "https://credgate.example.com/login/sso/callback"


@dataclass
class Keys:
    """A provider's signing keys: their private halves for minting, the public JWKS for checking."""

    rsa: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def jwks(self) -> list[dict[str, Any]]:
        public_rsa = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        public_ec = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        return [
            {**public_rsa, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
            {**public_ec, "kid": "ec-1", "use": "sig", "alg": "ES256"},
        ]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "248289761001",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": NONCE,
        "email": "jane@example.com",
        "email_verified": True,
        "preferred_username": "jane.doe",
        "name": "Jane Doe",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def mint(keys: Keys, kid: str = "rsa-1", **changes: Any) -> str:
    key = keys.rsa if kid.startswith("rsa") else keys.ec
    return jwt.encode(
        claims(**changes), key, algorithm="RS256" if kid.startswith("rsa") else "ES256", headers={"kid": kid}
    )


def verify(token: str, keys: Keys, **overrides: Any) -> Identity:
    options: dict[str, Any] = {"issuer": ISSUER, "client_id": CLIENT_ID, "nonce": NONCE} | overrides
    return verify_id_token(token, keys.jwks(), **options)


# -- ID tokens -------------------------------------------------------------------------------------------


def test_a_good_id_token_gives_the_identity(keys: Keys) -> None:
    identity = verify(mint(keys), keys)

    assert identity == Identity(ISSUER, "248289761001", "jane@example.com", True, "jane.doe", "Jane Doe")


def test_a_token_signed_with_an_ec_key_is_accepted_too(keys: Keys) -> None:
    assert verify(mint(keys, kid="ec-1"), keys).subject == "248289761001"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nonce": "another-sign-in"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"aud": "another-client"}, "aud"),
        ({"iss": "https://evil.example.com"}, "another issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "not valid yet"),
        ({"sub": None}, "no sub claim"),
        ({"aud": [CLIENT_ID, "another-client"]}, "azp"),
        ({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}, "azp"),
        ({"azp": "another-client"}, "azp"),
    ],
    ids=[
        "wrong-nonce",
        "no-nonce",
        "wrong-aud",
        "wrong-issuer",
        "expired",
        "issued-in-the-future",
        "no-sub",
        "several-audiences-no-azp",
        "several-audiences-other-azp",
        "other-azp",
    ],
)
def test_an_id_token_whose_claims_do_not_fit_is_refused(keys: Keys, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(IdTokenError, match=message):
        verify(mint(keys, **changes), keys)


def test_several_audiences_are_accepted_when_azp_is_our_client(keys: Keys) -> None:
    token = mint(keys, aud=[CLIENT_ID, "api"], azp=CLIENT_ID)

    assert verify(token, keys).subject == "248289761001"


def test_a_minute_of_clock_skew_is_allowed(keys: Keys) -> None:
    token = mint(keys, exp=int(time.time()) - 30)

    assert verify(token, keys).subject == "248289761001"


def test_an_unsigned_token_alg_none_is_refused(keys: Keys) -> None:
    token = jwt.encode(claims(), "", algorithm="none")

    with pytest.raises(IdTokenError, match="algorithm 'none' is refused"):
        verify(token, keys)


def test_a_token_signed_with_the_client_secret_hs256_is_refused(keys: Keys) -> None:
    token = jwt.encode(claims(), CLIENT_SECRET, algorithm="HS256", headers={"kid": "rsa-1"})

    with pytest.raises(IdTokenError, match="algorithm 'HS256' is refused"):
        verify(token, keys)


def test_a_token_signed_with_the_public_key_as_an_hmac_secret_is_refused(keys: Keys) -> None:
    public_pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()

    with pytest.raises(IdTokenError, match="refused"):
        verify(f"{signing_input}.{b64(signature)}", keys)


def test_a_symmetric_key_in_the_jwks_is_never_used(keys: Keys) -> None:
    secret_key = {"kty": "oct", "kid": "hmac-1", "k": base64.urlsafe_b64encode(CLIENT_SECRET.encode()).decode()}
    token = jwt.encode(claims(), CLIENT_SECRET, algorithm="HS256", headers={"kid": "hmac-1"})

    with pytest.raises(IdTokenError):
        verify_id_token(token, [*keys.jwks(), secret_key], issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE)


def test_a_token_naming_an_unknown_key_id_is_refused(keys: Keys) -> None:
    token = mint(keys, kid="rsa-1")
    renamed = [{**k, "kid": f"{k['kid']}-old"} for k in keys.jwks()]

    with pytest.raises(UnknownKeyError, match="signing key the provider does not publish"):
        verify_id_token(token, renamed, issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE)


def test_a_token_signed_by_another_key_under_a_known_key_id_is_refused(keys: Keys) -> None:
    forger = Keys()
    token = mint(forger, kid="rsa-1")

    with pytest.raises(IdTokenError, match="signature does not verify"):
        verify(token, keys)


def test_a_token_whose_algorithm_differs_from_its_keys_is_refused(keys: Keys) -> None:
    token = jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "rsa-1"})

    with pytest.raises(IdTokenError):
        verify(token, keys)


def test_an_algorithm_the_provider_does_not_announce_is_refused(keys: Keys) -> None:
    with pytest.raises(IdTokenError, match="ES256"):
        verify(mint(keys, kid="ec-1"), keys, algorithms=frozenset({"RS256"}))


def test_an_unverified_email_is_kept_but_said_unverified(keys: Keys) -> None:
    assert not verify(mint(keys, email_verified=False), keys).email_verified
    assert not verify(mint(keys, email_verified=None), keys).email_verified
    assert verify(mint(keys, email_verified="true"), keys).email_verified


def test_no_message_carries_the_token_or_the_nonce(keys: Keys) -> None:
    for token in (mint(keys, nonce="other"), mint(keys, aud="x"), jwt.encode(claims(), CLIENT_SECRET, "HS256")):
        with pytest.raises(IdTokenError) as caught:
            verify(token, keys)
        text = str(caught.value)
        assert token not in text and NONCE not in text and CLIENT_SECRET not in text and "\n" not in text


# -- settings and names ----------------------------------------------------------------------------------


def test_settings_need_an_https_issuer_and_a_client_id() -> None:
    assert SsoSettings.from_options(None, None, None, None) is None
    made = SsoSettings.from_options(ISSUER, CLIENT_ID, CLIENT_SECRET, "staff")
    assert made == SsoSettings(ISSUER, CLIENT_ID, CLIENT_SECRET, "staff")
    assert CLIENT_SECRET not in repr(made)
    assert SsoSettings.from_options("http://127.0.0.1:9000", CLIENT_ID, None, None) is not None
    for args, field_name in [
        (("http://login.example.com", CLIENT_ID, None, None), "--oidc-issuer"),
        (("login.example.com", CLIENT_ID, None, None), "--oidc-issuer"),
        ((ISSUER + "?tenant=1", CLIENT_ID, None, None), "--oidc-issuer"),
        ((ISSUER, None, None, None), "--oidc-client-id"),
        ((None, CLIENT_ID, None, None), "--oidc-issuer"),
        ((None, None, None, "staff"), "--oidc-issuer"),
    ]:
        with pytest.raises(SsoError, match=field_name):
            SsoSettings.from_options(*args)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"preferred_username": "jane.doe"}, "jane-doe"),
        ({"preferred_username": None, "email": "Zoë.Smith@example.com"}, "Zoe-Smith"),
        ({"preferred_username": "---", "email": None, "name": "Ana María"}, "Ana-Maria"),
        ({"preferred_username": "日本", "email": None, "name": None}, "sso-user"),
        ({"preferred_username": "x" * 100}, "x" * 56),
    ],
)
def test_a_new_users_name_is_made_of_the_allowed_characters(given: dict[str, Any], expected: str) -> None:
    identity = replace(Identity(ISSUER, "s", "jane@example.com", True, None, None), **given)

    assert user_name_hint(identity) == expected


# -- discovery ---------------------------------------------------------------------------------------


def discovery(**changes: Any) -> dict[str, Any]:
    document = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "response_types_supported": ["code", "id_token"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "HS256", "none"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


SETTINGS = SsoSettings(ISSUER, CLIENT_ID, CLIENT_SECRET)


def test_discovery_takes_only_asymmetric_algorithms_and_prefers_basic_client_auth() -> None:
    found = parse_metadata(discovery(), SETTINGS)

    assert found.algorithms == {"RS256", "ES256"}
    assert found.token_auth == "client_secret_basic"
    assert parse_metadata(
        discovery(token_endpoint_auth_methods_supported=["client_secret_post"]), SETTINGS
    ).token_auth == ("client_secret_post")
    assert parse_metadata(discovery(), replace(SETTINGS, client_secret=None)).token_auth == "none"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"issuer": "https://other.example.com"}, "not the configured issuer"),
        ({"issuer": ISSUER + "/"}, "set --oidc-issuer"),
        ({"token_endpoint": "http://login.example.com/token"}, "token_endpoint must be an https:// URL"),
        ({"jwks_uri": None}, "no jwks_uri"),
        ({"code_challenge_methods_supported": ["plain"]}, "S256"),
        ({"id_token_signing_alg_values_supported": ["HS256", "none"]}, "no algorithm we accept"),
        ({"token_endpoint_auth_methods_supported": ["private_key_jwt"]}, "client_secret_basic"),
    ],
)
def test_a_discovery_document_that_does_not_fit_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SsoError, match=message):
        parse_metadata(discovery(**changes), SETTINGS)


# -- a whole sign-in, against a provider answering through MockTransport -------------------------------------


@dataclass
class FakeProvider:
    keys: Keys
    token_claims: Callable[[Flow], dict[str, Any]]
    jwks_reads: int = 0
    token_requests: list[httpx2.Request] = field(default_factory=list)
    published: list[dict[str, Any]] | None = None
    userinfo: dict[str, Any] | None = None
    userinfo_requests: list[httpx2.Request] = field(default_factory=list)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx2.Response(200, json=discovery(userinfo_endpoint=f"{ISSUER}/userinfo"))
        if path == "/userinfo":
            self.userinfo_requests.append(request)
            return httpx2.Response(200, json=self.userinfo or {})
        if path == "/jwks":
            self.jwks_reads += 1
            return httpx2.Response(200, json={"keys": self.published or self.keys.jwks()})
        if path == "/token":
            self.token_requests.append(request)
            form = parse_qs(request.content.decode())
            if form["code"] != ["the-code"]:
                return httpx2.Response(400, json={"error": "invalid_grant"})
            flow = FLOWS[form["code_verifier"][0]]
            token = jwt.encode(self.token_claims(flow), self.keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
            return httpx2.Response(200, json={"access_token": "at", "token_type": "Bearer", "id_token": token})
        return httpx2.Response(404)


FLOWS: dict[str, Flow] = {}


def run_sign_in(
    provider: FakeProvider, flow: Flow, params: dict[str, str], client: SsoClient | None = None
) -> Identity:
    FLOWS[flow.verifier] = flow
    client = client or SsoClient(SETTINGS, transport=httpx2.MockTransport(provider.handle))

    async def go() -> Identity:
        return await client.finish(flow, params, REDIRECT)

    return anyio.run(go)


def test_a_sign_in_trades_the_code_with_pkce_and_basic_auth_and_verifies_the_id_token(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce))
    flow = new_flow("/me")
    client = SsoClient(SETTINGS, transport=httpx2.MockTransport(provider.handle))

    url = anyio.run(client.authorization_url, flow, REDIRECT)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(f"{ISSUER}/authorize?")
    assert query == {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "scope": "openid email profile",
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": pkce_challenge(flow.verifier),
        "code_challenge_method": "S256",
    }

    identity = run_sign_in(provider, flow, {"state": flow.state, "code": "the-code"}, client)

    assert identity.subject == "248289761001"
    sent = provider.token_requests[0]
    assert (
        sent.headers["Authorization"] == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    )
    assert CLIENT_SECRET not in sent.content.decode()
    assert parse_qs(sent.content.decode())["code_verifier"] == [flow.verifier]


def test_an_answer_with_another_state_is_refused_before_any_request(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce))
    flow = new_flow("/")

    with pytest.raises(SsoError, match="state"):
        run_sign_in(provider, flow, {"state": "forged", "code": "the-code"})
    assert provider.token_requests == []


def test_an_answer_from_another_issuer_is_refused(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce))
    flow = new_flow("/")

    with pytest.raises(SsoError, match="iss"):
        run_sign_in(provider, flow, {"state": flow.state, "code": "the-code", "iss": "https://evil.example.com"})


def test_an_old_sign_in_is_not_finished(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce))
    flow = new_flow("/", now=time.time() - 3600)

    with pytest.raises(SsoError, match="10 minutes"):
        run_sign_in(provider, flow, {"state": flow.state, "code": "the-code"})


def test_a_refused_code_says_the_providers_error_code_only(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce))
    flow = new_flow("/")

    with pytest.raises(SsoError, match=r"refused the code: invalid_grant$"):
        run_sign_in(provider, flow, {"state": flow.state, "code": "stolen-code"})


def test_a_provider_error_answer_is_one_line() -> None:
    flow = new_flow("/")

    with pytest.raises(SsoError, match=r"refused the sign-in: access_denied$"):
        run_sign_in(FakeProvider(Keys(), lambda flow: claims()), flow, {"state": flow.state, "error": "access_denied"})


def test_a_key_rotation_reads_the_jwks_again_once(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sso, "JWKS_REFETCH_SECONDS", 0)  # as if the last read were over a minute ago
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce))
    client = SsoClient(SETTINGS, transport=httpx2.MockTransport(provider.handle))
    provider.published = [{**k, "kid": "old"} for k in keys.jwks()]
    anyio.run(client.metadata)
    anyio.run(lambda: client.keys())
    assert provider.jwks_reads == 1
    provider.published = None  # the provider rotated: its JWKS now has the key the next token names

    flow = new_flow("/")
    identity = run_sign_in(provider, flow, {"state": flow.state, "code": "the-code"}, client)

    assert identity.subject == "248289761001"
    assert provider.jwks_reads == 2


def test_an_id_token_with_the_wrong_nonce_from_the_provider_is_refused(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce="replayed"))
    flow = new_flow("/")

    with pytest.raises(IdTokenError, match="nonce"):
        run_sign_in(provider, flow, {"state": flow.state, "code": "the-code"})


def test_an_email_missing_from_the_id_token_is_asked_of_the_userinfo_endpoint(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce, email=None, email_verified=None))
    provider.userinfo = {"sub": "248289761001", "email": "jane@example.com", "email_verified": True}
    flow = new_flow("/")

    identity = run_sign_in(provider, flow, {"state": flow.state, "code": "the-code"})

    assert (identity.email, identity.email_verified) == ("jane@example.com", True)
    assert provider.userinfo_requests[0].headers["Authorization"] == "Bearer at"


def test_a_userinfo_answer_about_another_subject_is_ignored(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce, email=None, email_verified=None))
    provider.userinfo = {"sub": "someone-else", "email": "boss@example.com", "email_verified": True}
    flow = new_flow("/")

    identity = run_sign_in(provider, flow, {"state": flow.state, "code": "the-code"})

    assert identity.subject == "248289761001" and identity.email is None and not identity.email_verified


def test_an_id_token_with_an_email_needs_no_userinfo(keys: Keys) -> None:
    provider = FakeProvider(keys, lambda flow: claims(nonce=flow.nonce))
    flow = new_flow("/")

    run_sign_in(provider, flow, {"state": flow.state, "code": "the-code"})

    assert provider.userinfo_requests == []
