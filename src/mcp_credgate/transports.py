"""Transports: MCP over stdio for local clients, and the HTTP server for remote agents."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from .config import Settings
from .declarations import Catalog
from .errors import GatewayError
from .server import Caller, Gateway, build_server, open_gateway


async def serve_stdio(settings: Settings, catalog: Catalog, group: str) -> None:
    async with open_gateway(settings, catalog) as gateway:
        if not gateway.gate.group_exists(group):
            raise GatewayError(f"no agent group named {group!r} (create it with `credgate group add {group}`)")
        caller = Caller(group=group)

        def identify(ctx: ServerRequestContext[Any] | None) -> Caller:
            return caller

        server = build_server(gateway, identify)
        gc.freeze()  # start-up objects are permanent: later collections need not walk them
        async with reload_on_sighup(gateway), stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


@asynccontextmanager
async def reload_on_sighup(gateway: Gateway) -> AsyncIterator[None]:
    """While the body runs, SIGHUP re-reads tools.d (see `Gateway.reload`)."""

    async def listen() -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGHUP)
            with receiver as signals:
                async for _ in signals:
                    gateway.reload()
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no SIGHUP here
            logging.getLogger("credgate").debug("no SIGHUP reload in this thread")

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def serve_http(settings: Settings, catalog: Catalog, host: str, port: int) -> None:
    """Run the HTTP app (MCP for agents, the dashboard for admins) until SIGINT/SIGTERM; in-flight requests
    finish, the audit is flushed."""
    from .http_app import build_http_app
    from .web.app import routes
    from .web.site import Site

    gateway = Gateway.open(settings, catalog)
    with Site.open(settings, lambda: gateway.catalog) as site:  # the dashboard's own store connection
        app = build_http_app(gateway, host=host, port=port, public_url=settings.public_url, extra_routes=routes(site))
        logging.getLogger("credgate").info(
            "serving MCP on http://%s:%d (/mcp, /sse) and the dashboard at /", host, port
        )
        await run_uvicorn(app, host, port)


async def serve_dashboard(settings: Settings, catalog: Catalog, host: str, port: int) -> None:
    """The dashboard alone, for admins whose agents run over stdio."""
    from .web.app import build_dashboard_app

    app = build_dashboard_app(settings, catalog, host=host, port=port)
    logging.getLogger("credgate").info("serving the dashboard on http://%s:%d", host, port)
    await run_uvicorn(app, host, port)


async def run_uvicorn(app: Any, host: str, port: int) -> None:
    import uvicorn

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
