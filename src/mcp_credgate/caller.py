"""Who a request is from: the agent group (and agent, and the user it acts for) that the transport names for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp.server.context import ServerRequestContext

from .declarations import McpHandler
from .isolation import UpstreamScope, upstream_scope
from .relay import AgentRequest


@dataclass(frozen=True)
class Caller:
    """One request's caller, made by the transport's `identify` (stdio: the process's group; HTTP: the
    verified bearer token's group and agent); frozen, and kept no longer than the request. `user`: the person
    the agent acts for (stdio: `serve --user`; HTTP: the agent's), whose personal credentials it uses."""

    group: str
    agent: str | None = None
    user: str | None = None

    def relayed(self, ctx: ServerRequestContext[Any] | None) -> AgentRequest:
        """The caller's MCP request as the relay to an upstream knows it (`ctx` None: an in-process call,
        which the upstream's own messages cannot reach)."""
        return AgentRequest(ctx, (self.group, self.agent))

    def upstream_scope(self, server: str, handler: McpHandler, credential: str) -> UpstreamScope:
        """The upstream that serves this caller with that credential: its group's, or with
        isolation = "agent" its own (a caller without an agent name is one agent of its group)."""
        return upstream_scope(server, credential, group=self.group, agent=self.agent, isolation=handler.isolation)
