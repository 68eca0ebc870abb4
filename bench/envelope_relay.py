"""The floor of a relay that reads each message's JSON-RPC envelope and nothing more: every line from the agent
and from the upstream is parsed as JSON (`json.loads`) and written again (`json.dumps`), a `tools/call`'s name
rewritten on the way in (as a gateway prefixing tools would) and its result passed back as it came.

    python bench/envelope_relay.py COMMAND [ARG...]    (the upstream's command line; tools named `up_NAME`)

Between `byte_relay.py` (no message read) and `bare_relay.py` (the SDK's server and client): what a relay pays
for reading messages at all, with no SDK on either side (`bench_upstream.py`)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

PREFIX = "up_"


def inbound(message: dict[str, Any]) -> dict[str, Any]:
    params = message.get("params")
    if message.get("method") == "tools/call" and isinstance(params, dict):
        name = params.get("name")
        if isinstance(name, str) and name.startswith(PREFIX):
            params["name"] = name[len(PREFIX) :]
    return message


def outbound(message: dict[str, Any]) -> dict[str, Any]:
    tools = message.get("result", {}).get("tools") if isinstance(message.get("result"), dict) else None
    for tool in tools or ():
        tool["name"] = PREFIX + tool["name"]
    return message


async def relay(reader: asyncio.StreamReader, write: Any, rewrite: Any) -> None:
    while line := await reader.readline():
        write((json.dumps(rewrite(json.loads(line)), separators=(",", ":")) + "\n").encode())


async def main() -> None:
    upstream = await asyncio.create_subprocess_exec(
        *sys.argv[1:], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert upstream.stdin is not None and upstream.stdout is not None
    stdin = asyncio.StreamReader(limit=2**24)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    out = sys.stdout.buffer

    def to_agent(data: bytes) -> None:
        out.write(data)
        out.flush()

    await asyncio.gather(relay(stdin, upstream.stdin.write, inbound), relay(upstream.stdout, to_agent, outbound))


if __name__ == "__main__":
    asyncio.run(main())
