"""What a group allows: one entry per tool, or one for every tool of an upstream MCP server.

A group's allow list is stored as text: a tool's name (`github_repos`), or `NAME.*` for all the tools of the
upstream server declared as NAME (the CLI also takes `NAME_*`). `AllowEntry` is the only code that reads or
writes that text; everything else asks it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["AllowEntry", "allows_upstream_tools"]

_WHOLE = ".*"  # the stored suffix of an entry that allows a whole upstream
_WHOLE_ALIASES = (".*", "_*")  # what users may type for it


@dataclass(frozen=True)
class AllowEntry:
    name: str  # a tool's name, or an upstream's (with `whole`)
    whole: bool = False  # every tool of the upstream named `name`

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """An entry as stored."""
        return cls(text[: -len(_WHOLE)], whole=True) if text.endswith(_WHOLE) else cls(text)

    @classmethod
    def of_upstream(cls, upstream: str) -> AllowEntry:
        return cls(upstream, whole=True)

    @staticmethod
    def names_whole_upstream(typed: str) -> bool:
        """Does what a user typed (`NAME.*` or `NAME_*`) ask for a whole upstream?"""
        return typed.endswith(_WHOLE_ALIASES)

    @staticmethod
    def without_suffix(typed: str) -> Iterable[str]:
        """The names a user may have meant by what they typed: as typed, and without a whole-upstream suffix."""
        yield typed
        for suffix in _WHOLE_ALIASES:
            if typed.endswith(suffix):
                yield typed[: -len(suffix)]

    @property
    def upstream(self) -> str | None:
        """The upstream this entry allows as a whole (None for a single tool)."""
        return self.name if self.whole else None

    def __str__(self) -> str:
        return f"{self.name}{_WHOLE}" if self.whole else self.name


def allows_upstream_tools(allowed: Collection[str], upstream: str, tools: Iterable[str]) -> bool:
    """Does an allow list (as stored) allow the upstream as a whole, or at least one of its `tools`?"""
    return str(AllowEntry.of_upstream(upstream)) in allowed or any(t in allowed for t in tools)
