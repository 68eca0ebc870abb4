"""Transports: MCP over stdio for local clients (remote HTTP transports come with agent tokens)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from .config import Settings
from .declarations import Catalog
from .errors import GatewayError
from .server import Caller, build_server, open_gateway


def configure_logging(level: int = logging.INFO) -> None:
    """Logs go to stderr: over stdio, stdout carries the protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


async def serve_stdio(settings: Settings, catalog: Catalog, group: str) -> None:
    async with open_gateway(settings, catalog) as gateway:
        if not gateway.gate.group_exists(group):
            raise GatewayError(f"no agent group named {group!r} (create it with `credgate group add {group}`)")
        caller = Caller(group=group)

        def identify(ctx: ServerRequestContext[Any]) -> Caller:
            return caller

        server = build_server(gateway, identify)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
