"""Start `credgate serve --group GROUP` over stdio with the SDK's client, list its tools and call them."""

from __future__ import annotations

import json
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def main(group: str) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("CREDGATE_")}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_credgate", "serve", "--group", group], env=env
    )
    async with Client(params) as client:
        tools = await client.list_tools()
        print("tools/list:")
        for tool in tools.tools:
            print(f"  {tool.name}: {tool.description}")
        for name, args in (
            ("echo", {"text": "hello through the gateway"}),
            ("account_login", {}),
            ("github_repos", {}),
        ):
            result = await client.call_tool(name, args)
            print(f"tools/call {name} -> isError={result.is_error}")
            print("  " + result.content[0].text if result.content else "")  # type: ignore[union-attr]
            if result.structured_content and result.is_error:
                print("  structuredContent: " + json.dumps(result.structured_content))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "demo")
