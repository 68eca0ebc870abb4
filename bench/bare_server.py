"""The baseline: a bare `mcp` low-level server over stdio with one echo tool, nothing else.

`--pipe-wire`: the same server on credgate's stdio wire (`serving/pipes.py`: read and written on the event loop)
instead of the SDK's threaded one, so that credgate's own work per call can be compared on an equal wire."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

ECHO = types.Tool(
    name="echo",
    description="Echo the text back.",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


async def on_list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[ECHO])


async def on_call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    text = str((params.arguments or {}).get("text", ""))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


async def main() -> None:
    server: Server[Any] = Server("bare-echo", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    if "--pipe-wire" in sys.argv:
        from mcp_credgate.serving.pipes import pipe_wire

        async with pipe_wire() as wire, stdio_server(*wire or ()) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        return
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
