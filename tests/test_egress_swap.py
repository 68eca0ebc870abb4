"""The swap rules on their own: where a placeholder becomes the real value, where it stays, and where it is found."""

from __future__ import annotations

import base64
import json

import pytest

from mcp_credgate.egress_swap import EgressRules, placeholder_field, restore, swap_body, swap_header, swap_target

pytestmark = pytest.mark.no_store

REAL = "real/token+9f8e"  # characters that percent-encoding and JSON escape differently
PLACEHOLDER = "cgph_PLACEHOLDERPLACEHOLDER234567"
RULES = EgressRules(swaps={PLACEHOLDER: REAL}, hosts=frozenset({"api.example.test"}), body_fields=frozenset({"key"}))


def test_a_percent_encoded_placeholder_in_the_query_is_swapped_and_encoded_again() -> None:
    target = b"/v1?a=1&key=cgph%5FPLACEHOLDERPLACEHOLDER234567&b=%zz"
    assert swap_target(RULES, target) == b"/v1?a=1&key=real%2Ftoken%2B9f8e&b=%zz"


def test_a_placeholder_in_the_path_is_left_as_it_is() -> None:
    target = f"/v1/{PLACEHOLDER}/x".encode()
    assert swap_target(RULES, target) == target


def test_a_placeholder_as_the_user_of_a_basic_authorization_is_swapped() -> None:
    value = b"Basic " + base64.b64encode(f"{PLACEHOLDER}:x".encode())
    swapped = swap_header(RULES, b"authorization", value)
    assert base64.b64decode(swapped.removeprefix(b"Basic ")) == f"{REAL}:x".encode()


def test_a_body_that_is_not_a_json_object_is_never_swapped() -> None:
    for content_type, body in [
        (b"application/json", json.dumps([{"key": PLACEHOLDER}]).encode()),
        (b"text/plain", json.dumps({"key": PLACEHOLDER}).encode()),
        (b"application/json", f'{{"key": "{PLACEHOLDER}"'.encode()),
    ]:
        assert swap_body(RULES, content_type, body) == body


def test_a_nested_field_of_the_same_name_is_not_swapped() -> None:
    body = json.dumps({"key": PLACEHOLDER, "inner": {"key": PLACEHOLDER}}).encode()
    assert json.loads(swap_body(RULES, b"application/json", body)) == {
        "key": REAL,
        "inner": {"key": PLACEHOLDER},
    }


def test_the_real_value_is_restored_raw_and_percent_encoded() -> None:
    answer = json.dumps({"a": REAL}).encode() + b" real%2Ftoken%2B9f8e"
    restored = restore(RULES, answer)
    assert restored == json.dumps({"a": PLACEHOLDER}).encode() + b" " + PLACEHOLDER.encode()


def test_a_placeholder_is_found_by_place_never_by_value() -> None:
    basic = b"Basic " + base64.b64encode(f"me:{PLACEHOLDER}".encode())
    assert placeholder_field(RULES, b"/x", [(b"authorization", basic)], b"") == "header authorization"
    assert placeholder_field(RULES, b"/x?q=cgph%5FPLACEHOLDERPLACEHOLDER234567", [], b"") == "request target"
    assert placeholder_field(RULES, b"/x", [], f"a={PLACEHOLDER}".encode()) == "body"
    assert placeholder_field(RULES, b"/x", [(b"accept", b"*/*")], b"hello") is None


def test_rules_refuse_an_empty_value_and_a_host_not_in_lowercase() -> None:
    with pytest.raises(ValueError, match="non-empty") as empty:
        EgressRules(swaps={PLACEHOLDER: ""}, hosts=frozenset())
    assert PLACEHOLDER not in str(empty.value)
    with pytest.raises(ValueError, match="lowercase"):
        EgressRules(swaps={}, hosts=frozenset({"API.example.test"}))


def test_a_declared_host_matches_exactly_or_with_its_port() -> None:
    rules = EgressRules(swaps={}, hosts=frozenset({"api.example.test", "other.example.test:8443"}))
    assert rules.declares("API.example.test.", 443)
    assert rules.declares("other.example.test", 8443)
    assert not rules.declares("other.example.test", 443)
    assert not rules.declares("x.api.example.test", 443)


@pytest.mark.parametrize("offset", [-40, -1, 0, 1, 40])
def test_a_percent_encoded_placeholder_is_found_wherever_it_lies_in_a_large_body(offset: int) -> None:
    encoded = "".join(f"%{ord(c):02X}" for c in PLACEHOLDER)  # every character escaped
    body = ("x" * (65536 * 2 + offset) + encoded + "y" * 1000).encode()

    assert placeholder_field(RULES, b"/upload", [], body) == "body"
    assert placeholder_field(RULES, b"/upload", [], body.replace(b"%63", b"c")) == "body"  # partly escaped
    assert placeholder_field(RULES, b"/upload", [], b"%41" * 100_000) is None
