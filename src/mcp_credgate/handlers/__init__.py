"""Tool handlers: each turns (arguments, credential) into a ToolOutput, with the credential injected here.

A handler never formats a secret into an error; whatever it returns is redacted by the server anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["ToolOutput"]


@dataclass(frozen=True)
class ToolOutput:
    """What a handler produced. `content` carries MCP content blocks as JSON (an upstream's images,
    resources…); without it the output is the one text block `text`. `mirrored`: `text` is `structured` as JSON
    text (the agent's copy is then written again from the redacted structure: a secret split over two of its
    values is only found there)."""

    text: str
    structured: dict[str, Any] | None = None
    is_error: bool = False
    content: list[dict[str, Any]] | None = None
    mirrored: bool = False

    @classmethod
    def from_value(cls, value: Any) -> ToolOutput:
        """A handler's return value as tool output: text as is, a dict also as structured content."""
        if isinstance(value, ToolOutput):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, bytes):
            return cls(value.decode("utf-8", errors="replace"))
        text = json.dumps(value, ensure_ascii=False, default=str)
        if isinstance(value, dict):
            return cls(text, value, mirrored=True)
        return cls(text)

    @classmethod
    def error(cls, text: str) -> ToolOutput:
        return cls(text, is_error=True)
