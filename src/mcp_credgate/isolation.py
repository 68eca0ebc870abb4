"""Which running upstream serves whom: the key of one upstream process (or remote session).

    scope = upstream_scope("github", "team-gh", group="research", agent="alice", isolation="group")
    # UpstreamScope(server="github", credential="team-gh", group="research", agent=None)

One upstream per (server, credential, group): two groups never share one, even when bound to the same
credential. `isolation = "agent"` in the declaration adds the agent (a token's agent name, or an OAuth
client's), so that each agent of a group gets its own; callers without an agent name (stdio) are one agent
of their group. Listing an upstream's tools outside any agent's call (`credgate tools`) has its own scope,
whose group is None: its process never serves a group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Isolation", "UpstreamScope", "upstream_scope"]

Isolation = Literal["group", "agent"]


@dataclass(frozen=True)
class UpstreamScope:
    """The key of one running upstream, frozen; it names no value. `group` None: discovery's own."""

    server: str
    credential: str
    group: str | None
    agent: str | None = None

    @classmethod
    def for_discovery(cls, server: str, credential: str) -> UpstreamScope:
        """The scope of an upstream started only to list its tools, for no group."""
        return cls(server, credential, None)

    def __str__(self) -> str:
        whose = "discovery" if self.group is None else f"group {self.group}"
        return f"{self.server} ({whose}{f', agent {self.agent}' if self.agent is not None else ''})"


def upstream_scope(
    server: str, credential: str, *, group: str, agent: str | None, isolation: Isolation
) -> UpstreamScope:
    """The scope of a caller's requests to an upstream: its group's, or with "agent" isolation its own."""
    return UpstreamScope(server, credential, group, agent if isolation == "agent" else None)
