"""Redaction of secret values in every form an upstream might echo them (contract §4)."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from mcp_credgate.credential import Credential
from mcp_credgate.redact import Redactor, encoded_forms, redactor_for
from tests.support.gateway import leaks, make_canary, secret_forms

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend

TOKEN = make_canary("R", rich=True)


@pytest.fixture
def redactor() -> Redactor:
    return Redactor({"token": TOKEN})


@pytest.mark.parametrize("form", sorted(secret_forms(TOKEN)))
def test_every_encoded_form_is_replaced(redactor: Redactor, form: str) -> None:
    text = f"before {secret_forms(TOKEN)[form]} after"

    out = redactor.text(text)

    assert "[redacted:token]" in out
    assert leaks(out, TOKEN) == []
    assert out.startswith("before ") and out.endswith(" after")


@pytest.mark.parametrize("lead", range(6))
def test_base64_of_a_secret_inside_longer_data_is_replaced_at_every_alignment(redactor: Redactor, lead: int) -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(b"P" * lead + TOKEN.encode() + b"-trailer-bytes").decode()

        out = redactor.text(f"session={blob}")

        assert "[redacted:token]" in out, (lead, encode)
        assert leaks(out, TOKEN) == []


def test_a_plain_secret_is_replaced_by_its_field_name() -> None:
    redactor = Redactor({"api_key": "plain-secret-value-123"})

    assert redactor.text("key=plain-secret-value-123;") == "key=[redacted:api_key];"


def test_every_occurrence_is_replaced(redactor: Redactor) -> None:
    out = redactor.text(f"{TOKEN} and {TOKEN} and {quote(TOKEN, safe='')}")

    assert out.count("[redacted:token]") == 3


def test_text_without_secrets_is_unchanged(redactor: Redactor) -> None:
    text = "nothing secret here: QmVhcmVy 0123abcd %20"

    assert redactor.text(text) == text


def test_json_structures_are_redacted_in_keys_values_and_nested_lists(redactor: Redactor) -> None:
    value = {"a": [TOKEN, {"b": f"x{TOKEN}y"}], TOKEN: 1, "n": 2, "ok": None}

    out = redactor.obj(value)

    assert out == {"a": ["[redacted:token]", {"b": "x[redacted:token]y"}], "[redacted:token]": 1, "n": 2, "ok": None}
    assert leaks(json.dumps(out), TOKEN) == []


def test_basic_auth_of_username_and_password_is_replaced() -> None:
    password = make_canary("P")
    credential = Credential("acct", "account", {"username": "alice", "password": password}, frozenset({"password"}))
    header = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()

    out = redactor_for(credential).text(f"Authorization: {header}")

    assert out == "Authorization: Basic [redacted:password]"


def test_non_secret_fields_are_left_alone() -> None:
    credential = Credential(
        "acct", "account", {"username": "alice-the-user", "password": make_canary("P")}, frozenset({"password"})
    )

    assert redactor_for(credential).text("signed in as alice-the-user") == "signed in as alice-the-user"


def test_each_secret_field_is_named_in_its_own_marker() -> None:
    a, b = make_canary("A"), make_canary("B")
    redactor = Redactor({"token": a, "refresh": b})

    assert redactor.text(f"{a} {b}") == "[redacted:token] [redacted:refresh]"


def test_a_short_secret_is_still_replaced_raw() -> None:
    redactor = Redactor({"pin": "42x"})

    assert redactor.text("pin is 42x.") == "pin is [redacted:pin]."


def test_the_redactor_repr_shows_no_secret(redactor: Redactor) -> None:
    assert leaks(repr(redactor), TOKEN) == []
    assert not leaks(str(redactor), TOKEN)


def test_a_credential_repr_masks_secret_values() -> None:
    secret = make_canary("M")
    credential = Credential("c", "t", {"token": secret, "user": "bob"}, frozenset({"token"}))

    shown = repr(credential) + str(credential)

    assert leaks(shown, secret) == []
    assert "bob" in shown


@pytest.mark.parametrize("length", range(1, 100))
def test_no_form_is_shorter_than_the_value(length: int) -> None:
    """The redactor skips texts shorter than the shortest secret, so this bound must hold for every form
    (base64 at each alignment included: the byte count modulo 3 decides how much of it is stable)."""
    for alphabet in ("a", "é", "/+", "\u2603x", '%"<&\\', "\U0001d11e"):
        value = (alphabet * length)[:length]
        assert min(len(form) for form in encoded_forms(value)) >= len(value)


def test_a_text_shorter_than_every_secret_is_returned_as_is_and_a_longer_one_is_redacted() -> None:
    redactor = Redactor({"token": "s3cret-value-0123", "other": "another-secret-value"})

    assert redactor.text("hi") == "hi"
    assert redactor.text("s3cret-value-012") == "s3cret-value-012"
    assert redactor.text("s3cret-value-0123") == "[redacted:token]"
    assert redactor.text("x s3cret-value-0123 y") == "x [redacted:token] y"


# found in a security review: JSON with HTML-safe escapes (Go's encoding/json default)
def test_a_secret_in_html_safe_json_escapes_is_redacted() -> None:
    redactor = Redactor({"password": "pa&ss<wo>rd-1234"})

    out = redactor.text('{"error":"bad password pa\\u0026ss\\u003cwo\\u003erd-1234"}')

    assert out == '{"error":"bad password [redacted:password]"}'
