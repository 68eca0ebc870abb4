"""Remote agents: one Starlette app serving Streamable HTTP at /mcp and SSE at /sse (+ /messages/).

Layers, outermost first:
1. `guard.RequestGuard`: a foreign Host or Origin gets 403 (DNS-rebinding protection), a token in the query
   string 401, a declared body over the cap 413 — all before authentication and before the body is read;
2. the SDK's bearer authentication (`BearerAuthBackend` + `AuthContextMiddleware`) with our
   `AgentTokenVerifier`, checked on every request, so a revoked token fails at its next request;
3. `AgentAuthRequired` (the SDK's `RequireAuthMiddleware`) on each MCP endpoint: 401 with `WWW-Authenticate`
   when the token is missing ("Authentication required") or held by no agent ("invalid or revoked token").
A store that cannot be used just now (checking a token, say) is 503 with a ref (`guard.StoreFaultAnswer`,
between 1 and 2).
The caller's agent and group come only from the verified token (`get_access_token()`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend, RequireAuthMiddleware
from mcp.server.context import ServerRequestContext
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..agents import AgentTokenVerifier
from ..authorization import AuthorizationServer, Registration
from ..caller import Caller
from ..config import Settings
from ..declarations import Catalog
from ..gateway import Gateway
from ..guard import MAX_BODY_BYTES, RequestGuard, StoreFaultAnswer, allowed_hosts_and_origins
from ..loopback import is_loopback_host
from ..probes import gateway_checks, probe_routes
from ..server import build_server
from ..web.app import build_dashboard_app, routes
from ..web.site import Site
from .events import ResumableSessions
from .lifecycle import reload_on_sighup
from .sign_in import CROSS_ORIGIN_PATHS, resource_metadata_url, sign_in_routes

INVALID_TOKEN = "invalid or revoked token"


class AgentAuthRequired(RequireAuthMiddleware):
    """The SDK's 401, saying which: no bearer token ("Authentication required"), or one that no agent holds
    (any more): "invalid or revoked token"."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if not isinstance(scope.get("user"), AuthenticatedUser) and scheme.lower() == "bearer" and token.strip():
            await self._send_auth_error(send, status_code=401, error="invalid_token", description=INVALID_TOKEN)
            return
        await super().__call__(scope, receive, send)


def identify(ctx: ServerRequestContext[Any] | None) -> Caller:
    """The caller is whoever the verified bearer token says, and nothing else."""
    token = get_access_token()
    if token is None or not token.claims or "group" not in token.claims:
        raise PermissionError("no authenticated agent")
    user = token.claims.get("user")
    return Caller(group=str(token.claims["group"]), agent=token.client_id, user=str(user) if user else None)


def build_http_app(
    gateway: Gateway,
    *,
    host: str,
    port: int,
    public_url: str | None,
    extra_routes: list[Route | Mount] | None = None,
    sign_in: AuthorizationServer | None = None,
) -> Starlette:
    """The MCP endpoints (and `extra_routes`: the dashboard's); with `sign_in`, the OAuth endpoints too, and
    OAuth access tokens count beside the static ones."""
    hosts, origins = allowed_hosts_and_origins(host, port, public_url)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )
    server = build_server(gateway, identify)
    manager = ResumableSessions(app=server, security_settings=security, max_request_body_size=MAX_BODY_BYTES)
    sse = SseServerTransport("/messages/", security_settings=security, max_request_body_size=MAX_BODY_BYTES)

    async def sse_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        async with sse.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    metadata_url = AnyHttpUrl(resource_metadata_url(sign_in)) if sign_in is not None else None

    def protected(app: ASGIApp) -> ASGIApp:
        return AgentAuthRequired(app, required_scopes=[], resource_metadata_url=metadata_url)

    routes: list[Route | Mount] = [
        *(sign_in_routes(sign_in) if sign_in is not None else []),
        Route("/mcp", endpoint=protected(StreamableHTTPASGIApp(manager)), methods=["GET", "POST", "DELETE"]),
        Route("/sse", endpoint=protected(sse_endpoint), methods=["GET"]),
        Mount("/messages/", app=protected(sse.handle_post_message)),
        *probe_routes(gateway_checks(gateway)),
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
            Middleware(
                RequestGuard,
                hosts=hosts,
                origins=origins,
                cross_origin_paths=CROSS_ORIGIN_PATHS if sign_in is not None else frozenset(),
            ),
            Middleware(StoreFaultAnswer),
            Middleware(
                AuthenticationMiddleware,
                backend=BearerAuthBackend(
                    AgentTokenVerifier(gateway.store, sign_in.resource if sign_in is not None else None)
                ),
            ),
            Middleware(AuthContextMiddleware),
        ],
        lifespan=lifespan,
    )


async def serve_http(
    settings: Settings, catalog: Catalog, host: str, port: int, registration: Registration = "loopback"
) -> None:
    """Run the HTTP app (MCP for agents, the dashboard for admins, OAuth sign-in for remote clients) until
    SIGINT/SIGTERM; in-flight requests finish, the audit is flushed."""
    gateway = Gateway.open(settings, catalog)
    with Site.open(settings, lambda: gateway.catalog) as site:  # the dashboard's own store connection
        site.sign_in = _sign_in_server(site, settings.public_url, host, registration)
        site.share_completions(gateway.setup_links)  # the clients sent a setup link wait on the gateway's side
        app = build_http_app(
            gateway,
            host=host,
            port=port,
            public_url=settings.public_url,
            extra_routes=routes(site),
            sign_in=site.sign_in,
        )
        logging.getLogger("credgate").info(
            "serving MCP on http://%s:%d (/mcp, /sse) and the dashboard at /", host, port
        )
        await run_uvicorn(app, host, port)


def _sign_in_server(site: Site, public_url: str, host: str, registration: Registration) -> AuthorizationServer | None:
    """Remote clients sign in with OAuth where the public URL is https, or loopback (RFC 8414's issuer rule):
    elsewhere their tokens and codes would cross the network in clear, so only static tokens are taken."""
    parts = urlsplit(public_url)
    if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
        logging.getLogger("credgate").warning(
            "OAuth sign-in for remote clients is off: the public URL %s is not https (set --public-url "
            "https://… behind your TLS proxy); static agent tokens work",
            public_url,
        )
        return None
    return AuthorizationServer(
        site.store, public_url, registration=registration, allow_loopback_documents=is_loopback_host(host)
    )


async def serve_dashboard(settings: Settings, catalog: Catalog, host: str, port: int) -> None:
    """The dashboard alone, for admins whose agents run over stdio."""
    app = build_dashboard_app(settings, catalog, host=host, port=port)
    logging.getLogger("credgate").info("serving the dashboard on http://%s:%d", host, port)
    await run_uvicorn(app, host, port)


async def run_uvicorn(app: Any, host: str, port: int) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the handler it found: make
    # that one a plain exit, so a clean SIGTERM shutdown ends with status 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        await server.serve()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)
