"""MCP over stdio for local clients: one group, the process's own, and the user it acts for (`serve --user`:
a claim by whoever may run the process; the local account is the trust boundary here).

Setup links must open (contract §7): unless a public URL names a running dashboard, the gateway serves their
pages itself (`OwnPages`), on an ephemeral loopback port, from the first link on.
"""

from __future__ import annotations

import gc
import socket
from dataclasses import replace
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskGroup
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from ..caller import Caller
from ..config import Settings
from ..declarations import Catalog
from ..errors import GatewayError
from ..gateway import Gateway, open_gateway
from ..server import build_server
from ..web.app import build_link_app
from ..web.site import Site
from .lifecycle import reload_on_sighup
from .pipes import pipe_wire


async def serve_stdio(
    settings: Settings, catalog: Catalog, group: str, user: str | None = None, own_pages: bool = True
) -> None:
    async with open_gateway(settings, catalog) as gateway:
        if not gateway.gate.group_exists(group):
            raise GatewayError(f"no agent group named {group!r} (create it with `credgate group add {group}`)")
        caller = Caller(group=group, user=user)

        def identify(ctx: ServerRequestContext[Any] | None) -> Caller:
            return caller

        server = build_server(gateway, identify)
        gc.freeze()  # start-up objects are permanent: later collections need not walk them
        async with (
            anyio.create_task_group() as pages,
            reload_on_sighup(gateway),
            pipe_wire() as wire,
            stdio_server(*wire or ()) as (read, write),
        ):
            if own_pages:
                gateway.pages = OwnPages(gateway, pages)
            await server.run(read, write, server.create_initialization_options())
            pages.cancel_scope.cancel()


class OwnPages:
    """The stdio gateway's page server: started at its first link, on an ephemeral 127.0.0.1 port (several
    `serve` processes never collide), until the gateway stops. Nothing listens before a link is given out."""

    own = True

    def __init__(self, gateway: Gateway, task_group: TaskGroup) -> None:
        self._gateway = gateway
        self._task_group = task_group
        self._url: str | None = None
        self._starting = anyio.Lock()

    @property
    def listening(self) -> str | None:
        return self._url

    async def base_url(self) -> str:
        async with self._starting:
            if self._url is None:
                self._url = await self._start()
        return self._url

    async def _start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        site = Site.open(replace(self._gateway.settings, public_url=url), lambda: self._gateway.catalog)
        site.share_completions(self._gateway.setup_links)  # the clients sent a link wait on the gateway's side
        config = uvicorn.Config(
            build_link_app(site, port),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        # what `Server.serve` does before `startup`, without taking over SIGINT/SIGTERM from the stdio server
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._task_group.start_soon(self._serve, server, site)
        return url

    async def _serve(self, server: uvicorn.Server, site: Site) -> None:
        try:
            await server.main_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await server.shutdown()
            site.close()
