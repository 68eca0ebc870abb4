"""Remote agents: one Starlette app serving Streamable HTTP at /mcp and SSE at /sse (+ /messages/).

Layers, outermost first:
1. `RequestGuard`: a foreign Host or Origin gets 403 (DNS-rebinding protection), a token in the query
   string 401, a declared body over the cap 413 — all before authentication and before the body is read;
2. the SDK's bearer authentication (`BearerAuthBackend` + `AuthContextMiddleware`) with our
   `AgentTokenVerifier`, checked on every request, so a revoked token fails at its next request;
3. `RequireAuthMiddleware` on each MCP endpoint: 401 with `WWW-Authenticate` when the token is missing
   or not valid.
The caller's agent and group come only from the verified token (`get_access_token()`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.context import ServerRequestContext
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .agents import AgentTokenVerifier
from .loopback import is_loopback_host
from .server import Caller, Gateway, build_server
from .transports import reload_on_sighup

MAX_BODY_BYTES = 4 * 1024 * 1024
TOKEN_QUERY_NAMES = frozenset({"access_token", "token", "auth", "authorization", "bearer"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def allowed_hosts_and_origins(host: str, port: int, public_url: str | None) -> tuple[list[str], list[str]]:
    """The Host headers and Origins this server answers: its own address (all loopback names when bound
    to loopback) and the public URL's."""
    names = list(LOOPBACK_NAMES) if is_loopback_host(host) else [f"[{host}]" if ":" in host else host]
    hosts = [f"{n}:{port}" for n in names]
    origins = [f"http://{h}" for h in hosts]
    if public_url:
        parts = urlsplit(public_url)
        if parts.netloc:
            default_port = {"http": 80, "https": 443}.get(parts.scheme)
            netloc = parts.netloc.lower()
            hosts.append(netloc)
            origins.append(f"{parts.scheme}://{netloc}")
            if parts.port is None and default_port:
                hosts.append(f"{netloc}:{default_port}")
    return sorted(set(hosts)), sorted(set(origins))


class RequestGuard:
    """Refuses foreign hosts/origins (403), query-string tokens (401) and oversized bodies (413) up front."""

    def __init__(self, app: ASGIApp, hosts: list[str], origins: list[str], max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.origins = {o.lower() for o in origins}
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self._refusal(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        host = (headers.get("host") or "").lower()
        if host not in self.hosts:
            return PlainTextResponse("Forbidden: unknown Host", status_code=403)
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return PlainTextResponse("Forbidden: foreign Origin", status_code=403)
        query = scope.get("query_string", b"").decode("latin-1")
        if any(name.lower() in TOKEN_QUERY_NAMES for name, _ in parse_qsl(query, keep_blank_values=True)):
            return PlainTextResponse(
                "Unauthorized: send the token in an Authorization: Bearer header, never in the URL",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
            )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return PlainTextResponse("Request body too large", status_code=413)
        return None


def identify(ctx: ServerRequestContext[Any] | None) -> Caller:
    """The caller is whoever the verified bearer token says, and nothing else."""
    token = get_access_token()
    if token is None or not token.claims or "group" not in token.claims:
        raise PermissionError("no authenticated agent")
    return Caller(group=str(token.claims["group"]), agent=token.client_id)


def build_http_app(
    gateway: Gateway, *, host: str, port: int, public_url: str | None, extra_routes: list[Route | Mount] | None = None
) -> Starlette:
    hosts, origins = allowed_hosts_and_origins(host, port, public_url)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )
    server = build_server(gateway, identify)
    manager = StreamableHTTPSessionManager(app=server, security_settings=security, max_request_body_size=MAX_BODY_BYTES)
    sse = SseServerTransport("/messages/", security_settings=security, max_request_body_size=MAX_BODY_BYTES)

    async def sse_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        async with sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    def protected(app: ASGIApp) -> ASGIApp:
        return RequireAuthMiddleware(app, required_scopes=[])

    routes: list[Route | Mount] = [
        Route("/mcp", endpoint=protected(StreamableHTTPASGIApp(manager)), methods=["GET", "POST", "DELETE"]),
        Route("/sse", endpoint=protected(sse_endpoint), methods=["GET"]),
        Mount("/messages/", app=protected(sse.handle_post_message)),
        *(extra_routes or []),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with gateway.running(), reload_on_sighup(gateway), manager.run():
                yield
        finally:
            await gateway.aclose()

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestGuard, hosts=hosts, origins=origins),
            Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(AgentTokenVerifier(gateway.store))),
            Middleware(AuthContextMiddleware),
        ],
        lifespan=lifespan,
    )
