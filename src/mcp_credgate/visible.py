"""Text shown to a person that someone else wrote (an agent's arguments in an approval question, an upstream's
message in an elicitation): every character that could hide or reorder what they read is written as its
escape, so what they see is what there is."""

from __future__ import annotations

import unicodedata

__all__ = ["shown_escaped"]

_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}  # controls, formatting (bidi, zero widths), separators
# Unicode's other default-ignorable code points, which render as nothing: the combining grapheme joiner, Hangul
# fillers, Khmer inherent vowels, Mongolian and other variation selectors (which can carry any bytes unseen)
_IGNORABLE = [(0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x3164, 0x3164)]
_IGNORABLE += [(0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xE0100, 0xE01EF)]


def shown_escaped(text: str) -> str:
    """`text` with every character that could hide or reorder what a person reads (controls, bidi and other
    format characters, line and paragraph separators, unassigned and other default-ignorable code points)
    written as its escape, `\\u202e`."""
    return "".join((f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") if _hidden(c) else c for c in text)


def _hidden(c: str) -> bool:
    return unicodedata.category(c) in _INVISIBLE or any(low <= ord(c) <= high for low, high in _IGNORABLE)
