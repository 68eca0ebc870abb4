"""The floor of any MCP-level proxy: a bare `mcp` low-level server over stdio that relays `tools/call` to an
upstream through the SDK's client, and does nothing else (no credential, no check, no redaction, no audit).

    python bench/bare_relay.py COMMAND [ARG...]    (the upstream's command line; on credgate's stdio wire)

What credgate adds on the proxy path is credgate against this relay, side by side (`bench_upstream.py`); what
any relay built on the SDK costs is this relay against the upstream called directly."""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from mcp_credgate.serving.pipes import pipe_wire


async def main() -> None:
    upstream = StdioServerParameters(command=sys.argv[1], args=sys.argv[2:], env=dict(os.environ))
    async with Client(stdio_client(upstream)) as client:

        async def on_list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return await client.list_tools()

        async def on_call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            return await client.call_tool(params.name, dict(params.arguments or {}))

        server: Server[Any] = Server("bare-relay", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
        async with pipe_wire() as wire, stdio_server(*wire or ()) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
