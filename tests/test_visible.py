"""Text a person reads that someone else wrote is shown with its hidden and reordering characters escaped."""

from __future__ import annotations

import pytest

from mcp_credgate.visible import shown_escaped

pytestmark = pytest.mark.no_store


def test_plain_text_of_any_script_is_shown_as_it_is() -> None:
    assert shown_escaped("plain text, é and 日本, 한국어 and emoji 👍") == "plain text, é and 日本, 한국어 and emoji 👍"


@pytest.mark.parametrize(
    ("hidden", "shown"),
    [
        ("\u202e", "\\u202e"),  # right-to-left override
        ("\u2066", "\\u2066"),  # left-to-right isolate
        ("\x07", "\\u0007"),  # bell
        ("\r", "\\u000d"),  # a carriage return overwriting a terminal line
        ("\u200b", "\\u200b"),  # zero width space
        ("\u2028", "\\u2028"),  # line separator
        ("\ufe0f", "\\ufe0f"),  # variation selector
        ("\U000e0101", "\\U000e0101"),  # variation selector supplement
        ("\u3164", "\\u3164"),  # Hangul filler
    ],
)
def test_each_hidden_or_reordering_character_is_shown_as_its_escape(hidden: str, shown: str) -> None:
    assert shown_escaped(f"a{hidden}b") == f"a{shown}b"
