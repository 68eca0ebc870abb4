"""A small real MCP server used as an upstream in tests: it reads its token from UPSTREAM_TOKEN.

python tests/support/upstream_server.py                     # stdio
python tests/support/upstream_server.py http PORT           # Streamable HTTP on 127.0.0.1:PORT/mcp,
                                                    # the token from the Authorization header
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("upstream-fixture")


def _token(ctx: Context) -> str:
    """Over HTTP the bearer header the gateway sent; over stdio the environment it started us with."""
    request = ctx.request_context.request
    header = request.headers.get("authorization", "") if request is not None else ""
    return header.removeprefix("Bearer ") if header else os.environ.get("UPSTREAM_TOKEN", "")


@server.tool(description="A hash of the token this upstream was given.")
def token_hash(ctx: Context) -> str:
    return hashlib.sha256(_token(ctx).encode()).hexdigest()


@server.tool(description="Echo the token itself (a gateway must redact it).")
def echo_token(ctx: Context, note: str = "") -> str:
    return f"{note}token={_token(ctx)}"


@server.tool(description="Sleep for some seconds.")
def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@server.tool(description="Exit the process at once.")
def crash() -> str:
    os._exit(3)


@server.tool(description="This process's environment, as JSON.")
def environment() -> str:
    return json.dumps(dict(os.environ))


NAME = f"u{secrets.token_hex(7)}"
with open("/proc/self/comm", "w") as _comm:  # what the host sees as this process's name
    _comm.write(NAME)


@server.tool(description="This process's name, unique (its comm): `tests.support.sandbox.host_pid` finds its pid.")
def pid() -> str:
    return NAME  # in a sandbox, os.getpid() is a pid of its own namespace: it means nothing outside


@server.tool(
    description="Over HTTP, the MCP session id the client sent (none on 2026-07-28) and the client's port (its "
    "connection, which a session keeps alive); 'stdio' over stdio."
)
def session(ctx: Context) -> str:
    request = ctx.request_context.request
    if request is None:
        return "stdio"
    port = request.client.port if request.client is not None else "?"
    return f"{request.headers.get('mcp-session-id', 'none')} from port {port}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
