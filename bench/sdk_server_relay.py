"""Half of an SDK relay: the SDK's low-level server toward the agent (on credgate's stdio wire), and toward the
upstream nothing but JSON-RPC lines (`json.loads`/`json.dumps`, requests matched to answers by id).

    python bench/sdk_server_relay.py COMMAND [ARG...]    (the upstream's command line; it must speak 2026-07-28,
                                                          whose requests need no handshake)

Against `bare_relay.py` (the SDK on both sides) it prices the SDK's client; against `envelope_relay.py` (no SDK on
either side), the SDK's server (`bench_upstream.py`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from mcp_credgate.serving.pipes import pipe_wire

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "sdk-server-relay", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


class Upstream:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._stdin, self._stdout = process.stdin, process.stdout
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def answers(self) -> None:
        while line := await self._stdout.readline():
            message = json.loads(line)
            waiting = self._waiting.pop(message.get("id"), None)
            if waiting is not None:
                waiting.set_result(message["result"])

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        key = next(self._ids)
        answer = self._waiting[key] = asyncio.get_running_loop().create_future()
        message = {"jsonrpc": "2.0", "id": key, "method": method, "params": {**params, "_meta": META}}
        self._stdin.write((json.dumps(message) + "\n").encode())
        return await answer


async def main() -> None:
    process = await asyncio.create_subprocess_exec(
        *sys.argv[1:], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    upstream = Upstream(process)

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult.model_validate(await upstream.request("tools/list", {}))

    async def on_call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        called = {"name": params.name, "arguments": params.arguments or {}}
        return types.CallToolResult.model_validate(await upstream.request("tools/call", called))

    server: Server[Any] = Server("sdk-server-relay", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    async with anyio.create_task_group() as tg:
        tg.start_soon(upstream.answers)
        async with pipe_wire() as wire, stdio_server(*wire or ()) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
