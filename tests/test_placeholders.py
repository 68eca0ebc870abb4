"""Placeholders: stable, one per (server, credential, group, field), shaped like the field's values, never the
real value; a pattern too narrow for placeholders that cannot collide is refused in one line."""

from __future__ import annotations

import re

import pytest

from mcp_credgate.crypto import MasterKey
from mcp_credgate.declarations import CredentialField
from mcp_credgate.errors import PlaceholderError
from mcp_credgate.placeholders import MIN_LENGTH, PREFIX, placeholder

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend

KEY = MasterKey(b"\x01" * 32).derive("egress placeholders")
PATTERNS = [
    None,
    r"^wk_[A-Za-z0-9]{8,}$",
    r"^sk-[a-f0-9]{32}$",
    r"^xox[bp]-[0-9]+-[A-Za-z0-9]+$",
    r"^ghp_[A-Za-z0-9]{36}$",
    r"^AKIA[0-9A-Z]{16}$",
    r"^[A-Za-z0-9+/]{40}={0,2}$",
    r"^.{20,}$",
]


def token(pattern: str | None = None, name: str = "token") -> CredentialField:
    return CredentialField(name=name, kind="token", secret=True, pattern=pattern)


def placeholder_of(
    field: CredentialField,
    server: str = "weather",
    credential: str = "acme",
    group: str = "team",
    key: bytes = KEY,
    avoid: str | None = None,
) -> str:
    return placeholder(key, server=server, credential=credential, group=group, field=field, avoid=avoid)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_same_field_of_the_same_credential_for_the_same_server_and_group_has_the_same_placeholder(
    pattern: str | None,
) -> None:
    again = MasterKey(b"\x01" * 32).derive("egress placeholders")  # as after a restart

    assert placeholder_of(token(pattern)) == placeholder_of(token(pattern), key=again)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_placeholder_passes_the_pattern_of_its_field_and_the_fields_own_check(pattern: str | None) -> None:
    field = token(pattern)

    made = placeholder_of(field)

    field.check_value(made)
    assert pattern is None or re.search(pattern, made)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_placeholder_is_at_least_sixteen_printable_characters_without_spaces(pattern: str | None) -> None:
    made = placeholder_of(token(pattern))

    assert len(made) >= MIN_LENGTH
    assert all("!" <= c <= "~" for c in made)


def test_a_field_without_a_pattern_has_a_placeholder_recognisable_as_one() -> None:
    made = placeholder_of(token())

    assert re.fullmatch(PREFIX + r"[a-z2-7]{32}", made)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_another_server_credential_group_or_field_has_another_placeholder(pattern: str | None) -> None:
    made = {
        placeholder_of(token(pattern)),
        placeholder_of(token(pattern), server="mail"),
        placeholder_of(token(pattern), credential="globex"),
        placeholder_of(token(pattern), group="ops"),
        placeholder_of(token(pattern, name="secret")),
        placeholder_of(token(pattern), key=MasterKey(b"\x02" * 32).derive("egress placeholders")),
    }

    assert len(made) == 6


def test_parts_are_told_apart_where_they_meet() -> None:
    assert placeholder_of(token(), server="ab", credential="c") != placeholder_of(token(), server="a", credential="bc")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_placeholder_is_never_the_real_value_it_is_asked_to_avoid(pattern: str | None) -> None:
    field = token(pattern)
    first = placeholder_of(field)

    other = placeholder_of(field, avoid=first)

    assert other != first
    field.check_value(other)
    assert placeholder_of(field, avoid=first) == other  # still the same for the same real value


def test_a_placeholder_never_holds_the_real_value_inside_it() -> None:
    field = token(r"^sk-[a-f0-9]{32}$")
    inner = placeholder_of(field)[3:20]

    assert inner not in placeholder_of(field, avoid=inner)


def test_a_real_value_held_by_every_placeholder_is_refused_without_showing_it() -> None:
    with pytest.raises(PlaceholderError) as refused:
        placeholder_of(token(), avoid="cgph_")

    assert (
        str(refused.value)
        == "field 'token': no placeholder can be made for it: every placeholder drawn holds the real value"
    )


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"^\d{4}$", "shorter than 16 characters"),
        (r"^(a|b)$", "shorter than 16 characters"),
        (r"^a{16}$", "too few distinct values"),
        (r"^[ab]{16}$", "too few distinct values"),
        (r"^\d{16}$", "too few distinct values"),
        (r"^\s{20}$", "whitespace or control characters"),
        (r"^(?>abc)[a-z]{30}$", "a construct placeholders cannot be drawn from"),
    ],
)
def test_a_pattern_too_narrow_or_beyond_drawing_is_refused_in_one_line_naming_the_field(pattern: str, why: str) -> None:
    with pytest.raises(PlaceholderError) as refused:
        placeholder_of(token(pattern, name="pin"))

    message = str(refused.value)
    assert message.startswith(f"field 'pin': no placeholder can be made for the pattern {pattern}: ")
    assert why in message
    assert "\n" not in message


def test_a_pattern_is_refused_for_every_credential_or_for_none() -> None:
    for server in ("weather", "mail", "calendar"):
        with pytest.raises(PlaceholderError):
            placeholder_of(token(r"^[ab]{16}$"), server=server)


def test_a_short_key_is_a_mistake_of_the_caller() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        placeholder_of(token(), key=b"short")
