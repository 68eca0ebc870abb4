"""The upstream of bench_upstream.py: an MCP server over stdio whose echo tool needs UPSTREAM_TOKEN."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("upstream-echo")


@server.tool(description="Echo the text back.")
def echo(text: str) -> str:
    assert os.environ["UPSTREAM_TOKEN"]
    return text


if __name__ == "__main__":
    server.run()
