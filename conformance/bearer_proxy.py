"""A small reverse proxy that adds `Authorization: Bearer TOKEN` to every request, for clients that cannot send
headers (the MCP conformance suite among them).

    CREDGATE_PROXY_TOKEN=cgt_… python conformance/bearer_proxy.py --listen 8940 --to http://127.0.0.1:8941

It binds 127.0.0.1 only and passes everything else through unchanged, Host and Origin included: the gateway
behind it still answers only the hosts it serves (start it with `--public-url http://127.0.0.1:LISTEN`, as
any deployment behind a proxy does). Responses stream back as they come (SSE). The token comes from the
environment, never the command line, and never appears in what the proxy prints.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import uvicorn
from starlette.types import Receive, Scope, Send

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"content-length"}
)


class BearerProxy:
    def __init__(self, target: str, token: str) -> None:
        self.target = target.rstrip("/")
        self.authorization = f"Bearer {token}".encode()
        self.client: httpx2.AsyncClient | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        timeout = httpx2.Timeout(30.0, read=None)  # SSE streams stay open as long as the client keeps them
        async with httpx2.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            self.client = client
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert scope["type"] == "http" and self.client is not None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP | {b"authorization"}]
        headers.append((b"authorization", self.authorization))
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.target + scope["raw_path"].decode("latin-1") + (f"?{query}" if query else "")
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        response = await self.client.send(request, stream=True)
        try:
            out_headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message: dict[str, Any] = dict(await receive())
        assert message["type"] == "lifespan.startup"
        async with self.running():
            await send({"type": "lifespan.startup.complete"})
            message = dict(await receive())
        await send({"type": "lifespan.shutdown.complete"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", type=int, required=True, metavar="PORT", help="port on 127.0.0.1")
    parser.add_argument("--to", required=True, metavar="URL", help="the server behind, e.g. http://127.0.0.1:8941")
    args = parser.parse_args(argv)
    token = os.environ.get("CREDGATE_PROXY_TOKEN", "")
    if not token:
        parser.error("set CREDGATE_PROXY_TOKEN to the agent token to add")
    uvicorn.run(BearerProxy(args.to, token), host="127.0.0.1", port=args.listen, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
