"""Redaction of secret values in every form an upstream might echo them (contract §4)."""

from __future__ import annotations

import base64
import html
import json
import string
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_credgate import redact
from mcp_credgate.credential import Credential
from mcp_credgate.redact import Redactor, patterns_of, redactor_for, shortest_pattern
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
def test_no_pattern_is_shorter_than_the_bound_the_redactor_skips_texts_under(length: int) -> None:
    """The redactor skips texts shorter than this bound, so it must hold for every pattern (base64 at each
    alignment included: the byte count modulo 3 decides how much of it the secret alone decides)."""
    for alphabet in ("a", "é", "/+", "\u2603x", '%"<&\\', "\U0001d11e"):
        value = (alphabet * length)[:length]
        exact, folded = patterns_of(value)
        assert min(len(p) for p in exact | folded) >= shortest_pattern(value)


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


# -- issue 19: the forms an agent could still pull out (each failed on the redactor before it) --------------

PASSWORD = "Pa$$w0rd!*(x)'~é<&>\"/+"


def _html_numeric(text: str) -> str:
    return "".join(f"&#{ord(c)};" for c in text)


def _every_char_u_escaped(text: str) -> str:
    utf16 = text.encode("utf-16-be")
    return "".join(f"\\u{utf16[i]:02x}{utf16[i + 1]:02x}" for i in range(0, len(utf16), 2))


def _wrapped(text: str, width: int, newline: str) -> str:
    return newline.join(text[i : i + width] for i in range(0, len(text), width))


def _encode_uri_component(text: str) -> str:
    return quote(text, safe="-_.!~*'()")


def _base64_wrapped_blob(width: int, newline: str) -> str:
    return _wrapped(base64.b64encode(b"\x00" * 40 + PASSWORD.encode() + b"\xff" * 90).decode(), width, newline)


ENCODED = {
    "html-escaped": html.escape(PASSWORD),
    "html-escaped without quotes": html.escape(PASSWORD, quote=False),
    "html numeric references": _html_numeric(PASSWORD),
    "encodeURIComponent (keeps !*'())": _encode_uri_component(PASSWORD),
    "Java URLEncoder (keeps *, + for space)": quote_plus(PASSWORD, safe="*-._"),
    "percent-encoding, lower-case escapes": quote(PASSWORD, safe="").lower(),
    "upper case": PASSWORD.upper(),
    "lower case": PASSWORD.lower(),
    "every character \\u-escaped": _every_char_u_escaped(PASSWORD),
    "every character \\u-escaped, upper-case hex": _every_char_u_escaped(PASSWORD).upper().replace("\\U", "\\u"),
    "JSON in a JSON string": json.dumps(json.dumps(PASSWORD))[1:-1],
    "html-escaped URL-encoding": html.escape(quote(PASSWORD)),
    "URL-encoded JSON": quote(json.dumps(PASSWORD)),
    "base64 wrapped at 76 columns (MIME)": _wrapped(base64.b64encode(PASSWORD.encode() * 4).decode(), 76, "\r\n"),
    "base64 wrapped at 64 columns (PEM)": _wrapped(base64.b64encode(b"-" + PASSWORD.encode() * 3).decode(), 64, "\n"),
}


@pytest.mark.parametrize("form", sorted(ENCODED))
def test_a_secret_in_every_encoding_an_api_uses_is_redacted(form: str) -> None:
    out = Redactor({"password": PASSWORD}).text(f"<p>error: {ENCODED[form]} </p>")

    assert "[redacted:password]" in out
    assert leaks(out, PASSWORD) == []
    assert out.startswith("<p>error: ") and out.endswith(" </p>")


@pytest.mark.parametrize(("width", "newline"), [(64, "\n"), (76, "\r\n"), (76, "\n")])
def test_a_base64_blob_that_holds_the_secret_is_redacted_whole_so_no_edge_byte_survives(
    width: int, newline: str
) -> None:
    out = Redactor({"password": PASSWORD}).text(f"attachment:\n{_base64_wrapped_blob(width, newline)}\n--end")

    assert out == "attachment:\n[redacted:password]\n--end"


def test_a_secret_split_over_two_consecutive_strings_is_redacted_in_both() -> None:
    for cut in range(1, len(PASSWORD)):
        out = Redactor({"password": PASSWORD}).obj(["head " + PASSWORD[:cut], PASSWORD[cut:] + " tail"])

        assert out == ["head [redacted:password]", "[redacted:password] tail"], cut


def test_a_numeric_secret_is_redacted_as_a_json_number_and_as_text() -> None:
    redactor = Redactor({"pin": "84207311"})

    out = redactor.obj({"account": 84207311, "parts": [8420, 7311], "float": 84207311.0, "text": "pin 84207311"})

    assert out == {
        "account": "[redacted:pin]",
        "parts": ["[redacted:pin]", "[redacted:pin]"],
        "float": "[redacted:pin]",
        "text": "pin [redacted:pin]",
    }


def test_a_secret_that_is_a_boolean_text_is_compared_by_its_json_text() -> None:
    assert Redactor({"flag": "true"}).obj({"ok": True, "n": 1}) == {"ok": "[redacted:flag]", "n": 1}


def test_the_case_of_a_short_secret_is_not_folded() -> None:
    """Under CASE_FOLD_LENGTH, another case is another word: "abcd" must not redact "ABCD"."""
    assert Redactor({"pin": "abcd"}).text("ABCD abcd") == "ABCD [redacted:pin]"


def test_a_redacted_marker_does_not_depend_on_the_secret_length() -> None:
    short, long = Redactor({"token": "x" * 9}), Redactor({"token": "y" * 90})

    assert short.text("a " + "x" * 9 + " b") == long.text("a " + "y" * 90 + " b")


# -- property tests: generated secrets, encodings and their compositions, splits at every position --------

_TEXTUAL: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "url": lambda s: quote(s, safe=""),
    "url path": quote,
    "encodeURIComponent": _encode_uri_component,
    "url plus": lambda s: quote_plus(s, safe=""),
    "json": lambda s: json.dumps(s)[1:-1],
    "json ascii": lambda s: json.dumps(s, ensure_ascii=True)[1:-1],
    "json slash": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "\\u all": _every_char_u_escaped,
    "html": html.escape,
    "html numeric": _html_numeric,
    "ascii upper": lambda s: "".join(c.upper() if c.isascii() else c for c in s),
    "ascii lower": lambda s: "".join(c.lower() if c.isascii() else c for c in s),
}
_BINARY: dict[str, Callable[[str], str]] = {
    "hex": lambda s: s.encode().hex(),
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "base64 of a blob": lambda s: base64.b64encode(b"\x01\x02" + s.encode() + b"\x03").decode(),
    "base64 wrapped": lambda s: _wrapped(base64.b64encode(b"\x07" + s.encode() * 3).decode(), 16, "\n"),
    "base64 of url": lambda s: base64.b64encode(quote(s, safe="").encode()).decode(),
}
_SECRETS = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=8, max_size=40),
    st.text(alphabet=string.digits, min_size=8, max_size=20),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=8, max_size=24),
)


@settings(max_examples=300, deadline=None)
@given(
    secret=_SECRETS,
    inner=st.sampled_from(sorted(_TEXTUAL) + sorted(_BINARY)),
    outer=st.sampled_from(sorted(_TEXTUAL)),
    split=st.floats(min_value=0, max_value=1),
)
def test_no_composition_of_two_encodings_split_anywhere_lets_the_secret_be_recovered(
    secret: str, inner: str, outer: str, split: float
) -> None:
    encode = {**_TEXTUAL, **_BINARY}
    form = _TEXTUAL[outer](encode[inner](secret))
    cut = round(split * len(form))

    out = Redactor({"secret": secret}).obj(["before " + form[:cut], form[cut:] + " after"])

    assert leaks("".join(out), secret) == [], (inner, outer, cut)


@settings(max_examples=300, deadline=None)
@given(
    secret=_SECRETS,
    inner=st.sampled_from(sorted(_TEXTUAL) + sorted(_BINARY)),
    outer=st.sampled_from(sorted(_TEXTUAL)),
    noise=st.text(max_size=60),
    copies=st.integers(min_value=1, max_value=3),
)
def test_a_short_text_is_redacted_by_plain_search_exactly_as_the_automaton_would(
    secret: str, inner: str, outer: str, noise: str, copies: int
) -> None:
    encode = {**_TEXTUAL, **_BINARY}
    form = _TEXTUAL[outer](encode[inner](secret))
    text = noise.join([form] * copies) + noise + secret.upper() + form[: len(form) // 2]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redact, "FIND_BUDGET", 10**12)
        searched = Redactor({"secret": secret}).text(text)
        patch.setattr(redact, "FIND_BUDGET", 0)
        by_automaton = Redactor({"secret": secret}).text(text)

    assert searched == by_automaton


def test_a_typed_redaction_keeps_a_number_a_number_where_a_message_schema_wants_one() -> None:
    out = Redactor({"pin": "84207311"}).obj({"progress": 84207311, "total": 5.0, "done": True}, typed=True)

    assert out == {"progress": 0, "total": 5.0, "done": True}


# -- found in a hostile review of the rewritten redactor ----------------------------------------------------

REVIEWED = "Zq7-secret-Tk9!"


@pytest.mark.parametrize(
    ("secret", "text"),
    [
        ("correct horse battery staple", "password=correct+horse+battery+staple"),  # form-encoded, no %
        ("pass+word/xyz12", "pass+word%2Fxyz12"),  # a + the encoder left alone
        ("tS3cr<e>t-xyz9", quote(html.escape("\\tS3cr<e>t-xyz9"), safe="")),  # a JSON escape's start before it
        ("4fS3cr<e>t-xyz9", quote(html.escape("%4fS3cr<e>t-xyz9"), safe="")),
        ('4f"S3cret-xyz9', html.escape(json.dumps({"pw": '%4f"S3cret-xyz9'}))),
        ('#1S3cr"et-xyz9', quote(json.dumps('&#1S3cr"et-xyz9'), safe="")),
        ("PASSWORD\u03a3", "PASSWORD\u03a3X"),  # a capital sigma lowers by its context
        ("PASSWORD\u03a3", "\u0130 PASSWORD\u03a3 y"),
        ("password\u03c3", "PASSWORD\u03a3"),
        (
            "Zq7-secret-Tk9!",
            "  "
            + base64.b64encode(b"\x01Zq7-secret-Tk9!").decode()[:10]
            + "\n  "
            + base64.b64encode(b"\x01Zq7-secret-Tk9!").decode()[10:],
        ),  # wrapped with an indent
        ("Zq7-secret-Tk9!", "".join(f"&#{ord(c):08d};" for c in "Zq7-secret-Tk9!")),  # zero-padded references
        ("a!b*c'd(e)f/g", base64.b64encode(quote("a!b*c'd(e)f/g", safe="-_.!~*'()").encode()).decode()),
        ('pa/ss"word-1', base64.b64encode(json.dumps('pa/ss"word-1').replace("/", "\\/").encode()).decode()),
    ],
)
def test_what_the_review_got_through_is_redacted(secret: str, text: str) -> None:
    out = Redactor({"t": secret}).text(text)

    assert "[redacted:t]" in out, out
    assert leaks(out, secret) == [], out


def test_a_marker_never_completes_a_secret_that_starts_with_its_last_character() -> None:
    for secret, text in ((":]k9#Lp2q", ":]k9#Lp2q]k9#Lp2q"), ("k9#Lp2q[", "k9#Lp2qk9#Lp2q[")):
        out = Redactor({"password": secret}).text(text)

        assert secret not in out, out


def test_type_is_aside_only_in_a_content_block_and_annotations_do_not_break_two_blocks_apart() -> None:
    redactor = Redactor({"t": REVIEWED})
    blocks = [
        {"type": "text", "text": REVIEWED[:7], "annotations": {"audience": ["user"], "priority": 0.5}},
        {"type": "text", "text": REVIEWED[7:]},
    ]

    assert REVIEWED[:7] not in json.dumps(redactor.obj(blocks))
    assert redactor.obj({"a": REVIEWED[:9], "type": REVIEWED[9:]}) == {"a": "[redacted:t]", "type": "[redacted:t]"}


def test_a_number_key_that_is_a_secret_is_redacted() -> None:
    assert Redactor({"pin": "84207311"}).obj({84207311: "x"}) == {"[redacted:pin]": "x"}


def test_lone_surrogates_and_huge_integers_do_not_make_redaction_raise() -> None:
    redactor = Redactor({"t": "secretvalue123"})

    assert redactor.text('"\\ud800" padding padding secretvalue123') == '"\\ud800" padding padding [redacted:t]'
    assert redactor.text("x\ud800 secretvalue123") == "x\ud800 [redacted:t]"
    assert redactor.obj({"n": 10**5000, "s": "secretvalue123"})["s"] == "[redacted:t]"
