"""MCP over stdio for local clients: one group, the process's own, and the user it acts for (`serve --user`:
a claim by whoever may run the process; the local account is the trust boundary here)."""

from __future__ import annotations

import gc
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from ..caller import Caller
from ..config import Settings
from ..declarations import Catalog
from ..errors import GatewayError
from ..gateway import open_gateway
from ..server import build_server
from .lifecycle import reload_on_sighup
from .pipes import pipe_wire


async def serve_stdio(settings: Settings, catalog: Catalog, group: str, user: str | None = None) -> None:
    async with open_gateway(settings, catalog) as gateway:
        if not gateway.gate.group_exists(group):
            raise GatewayError(f"no agent group named {group!r} (create it with `credgate group add {group}`)")
        caller = Caller(group=group, user=user)

        def identify(ctx: ServerRequestContext[Any] | None) -> Caller:
            return caller

        server = build_server(gateway, identify)
        gc.freeze()  # start-up objects are permanent: later collections need not walk them
        async with reload_on_sighup(gateway), pipe_wire() as wire, stdio_server(*wire or ()) as (read, write):
            await server.run(read, write, server.create_initialization_options())
