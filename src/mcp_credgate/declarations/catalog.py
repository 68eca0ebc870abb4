"""The catalog: every valid tool and credential type, by name, and the upstream MCP servers apart."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import DeclarationError
from .checks import pydantic_problems
from .models import (
    MICROS,
    CredentialSpec,
    McpHandler,
    ToolDeclaration,
)


@dataclass(frozen=True)
class Tool:
    """A declared tool and the file it came from. A tool of an upstream MCP server also names the upstream
    (its declaration's name) and its name there."""

    decl: ToolDeclaration
    source: Path
    function: Callable[..., Any] | None = field(default=None, compare=False)
    upstream: str | None = None
    upstream_tool: str | None = None

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def credential(self) -> CredentialSpec | None:
        return self.decl.credential


@dataclass(frozen=True)
class Upstream:
    """A declared upstream MCP server (handler kind "mcp") and the file it came from. Its tools join the
    catalog as `Tool`s once discovered; a group allows it as a whole with `NAME.*`."""

    decl: ToolDeclaration
    source: Path

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def credential(self) -> CredentialSpec | None:
        return self.decl.credential

    @property
    def handler(self) -> McpHandler:
        handler = self.decl.handler
        assert isinstance(handler, McpHandler)  # only mcp declarations become upstreams (`load_catalog`)
        return handler


@dataclass(frozen=True)
class Catalog:
    """Every valid tool, by name, and every credential type, by name. Upstream MCP servers are kept apart
    (`upstreams`); their tools join `tools` once discovered (`with_discovered`)."""

    tools: Mapping[str, Tool]
    types: Mapping[str, CredentialSpec]
    problems: tuple[str, ...] = ()
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)

    def undiscovered_upstream(self, tool_name: str) -> str | None:
        """The declared upstream whose tools are not listed yet and that would export a tool of this name (None
        for a declared tool)."""
        if tool_name in self.tools:
            return None
        for name, upstream in self.upstreams.items():
            prefix = name if upstream.handler.prefix is None else upstream.handler.prefix
            if not self.upstream_tools(name) and (not prefix or tool_name.startswith(f"{prefix}_")):
                return name
        return None

    def rediscovered(self, discovered: Mapping[str, Sequence[Mapping[str, Any]]]) -> Catalog:
        """The same declarations with the upstreams' tools as now discovered (those listed before dropped)."""
        declared = {n: t for n, t in self.tools.items() if t.upstream is None}
        return replace(self, tools=declared).with_discovered(discovered)

    def upstream_tools(self, upstream: str) -> list[str]:
        return sorted(n for n, t in self.tools.items() if t.upstream == upstream)

    def with_discovered(self, discovered: Mapping[str, Sequence[Mapping[str, Any]]]) -> Catalog:
        """Add the upstreams' tools as discovered (name, description, inputSchema), after their allow-lists."""
        tools = dict(self.tools)
        problems = list(self.problems)
        for name, upstream in self.upstreams.items():
            handler = upstream.handler
            for listed in discovered.get(name, ()):
                remote = str(listed.get("name", ""))
                if handler.tools is not None and remote not in handler.tools:
                    continue
                label = f"{upstream.source}: upstream tool {remote!r}"
                try:
                    decl = ToolDeclaration.model_validate(
                        {
                            "name": handler.tool_name(name, remote),
                            "description": listed.get("description") or "",
                            "input_schema": listed.get("inputSchema") or {"type": "object"},
                            "credential": upstream.decl.credential,
                            "handler": handler,
                            "approval": upstream.decl.approval,
                            "cost": Decimal(upstream.decl.costs.get(remote, 0)) / MICROS,  # validated again
                            "currency": upstream.decl.currency,
                        }
                    )
                except ValidationError as exc:
                    problems += pydantic_problems(label, exc)
                    continue
                if decl.name in tools:
                    problems.append(f"{label}: its name {decl.name!r} is taken by {tools[decl.name].source}")
                    continue
                tools[decl.name] = Tool(decl=decl, source=upstream.source, upstream=name, upstream_tool=remote)
        return replace(self, tools=dict(sorted(tools.items())), problems=tuple(problems))

    def tool(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def tools_of_type(self, type_name: str) -> list[str]:
        return sorted(n for n, t in self.tools.items() if t.credential is not None and t.credential.type == type_name)

    def raise_problems(self) -> None:
        if self.problems:
            raise DeclarationError(list(self.problems))
