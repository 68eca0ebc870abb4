"""The upstream of bench_egress.py: an MCP server over stdio whose `call` tool GETs `$API_URL/v1/me` with
`Authorization: Bearer $API_TOKEN` through one kept-alive httpx client (as a real server would), which follows
the proxy and CA variables its environment holds."""

from __future__ import annotations

import os

import httpx
from mcp.server.mcpserver import MCPServer

server = MCPServer("egress-bench-upstream")
client = httpx.Client(timeout=30)


@server.tool(description="Call the API with the token.")
def call() -> str:
    response = client.get(
        os.environ["API_URL"] + "/v1/me", headers={"authorization": f"Bearer {os.environ['API_TOKEN']}"}
    )
    return str(response.status_code)


if __name__ == "__main__":
    server.run()
