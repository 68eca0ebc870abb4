"""Masking and the read-only credential mapping handed to handlers."""

from __future__ import annotations

import pytest

from mcp_credgate.credential import EMPTY_CREDENTIAL, MASK, Credential, mask

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", "••••"),
        ("abc", "••••"),
        ("elevenchars", "••••"),  # 11 characters: no tail
        ("twelve_chars", "••••hars"),  # 12 characters: the last 4
        ("sk_live_0123456789abcdef", "••••cdef"),
    ],
)
def test_mask_shows_the_last_four_only_from_twelve_characters(value: str, shown: str) -> None:
    assert mask(value) == shown
    assert MASK == "••••"


def test_credential_is_a_read_only_mapping() -> None:
    cred = Credential("acme", "account", {"username": "alice", "password": "hunter2hunter2"}, frozenset({"password"}))

    assert dict(cred) == {"username": "alice", "password": "hunter2hunter2"}
    assert len(cred) == 2
    assert cred.is_secret("password")
    assert not cred.is_secret("username")
    assert cred.secrets() == {"password": "hunter2hunter2"}
    with pytest.raises(TypeError):
        cred["password"] = "changed"  # type: ignore[index]


def test_credential_repr_and_str_mask_secret_values() -> None:
    cred = Credential("acme", "account", {"username": "alice", "password": "hunter2hunter2"}, frozenset({"password"}))

    for shown in (repr(cred), str(cred), f"{cred}"):
        assert "hunter2hunter2" not in shown
        assert "hunter2hun" not in shown
        assert "alice" in shown
        assert "••••ter2" in shown
    assert cred.masked() == {"username": "alice", "password": "••••ter2"}


def test_empty_credential_has_no_values() -> None:
    assert dict(EMPTY_CREDENTIAL) == {}
    assert EMPTY_CREDENTIAL.secrets() == {}
