"""The gateway's app-lifetime parts, opened once and closed once.

    gateway = Gateway.open(settings, catalog)   # declarations, store, gate, audit writer, refresher
    async with gateway.running():               # upstream MCP servers run inside
        ...                                     # serve: `server.build_server(gateway, identify)`
    await gateway.aclose()                      # HTTP client, audit (flushed), stores

Per-call work is done above it (`server.ToolCalls`, `front.Front`), with the parts it holds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2

from . import oauth
from .audit import AuditLog
from .config import Settings
from .credential import Credential
from .deadlines import Deadlines
from .declarations import Catalog, load_catalog
from .front import Front
from .gate import CredentialWarning, Gate, Ready
from .handlers.http import make_client
from .handlers.upstream import UpstreamPool, upstream_pool
from .store import Store
from .token_refresh import TokenRefresher

logger = logging.getLogger("credgate.server")  # the name its reload messages always had


class Gateway:
    """Lives as long as the app, from `open` to `aclose`: settings, declarations, store, gate, audit writer,
    HTTP client, token refresher, the python handlers' deadlines, the front (resources, prompts...), and the
    upstream pool while `running`. `reload` replaces the declarations and the gate as a whole. It keeps
    nothing of a call."""

    def __init__(self, settings: Settings, catalog: Catalog, store: Store, audit_store: Store) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.gate = Gate(store, catalog, settings.public_url)
        self.audit = AuditLog(audit_store.write_audit)
        self._audit_store = audit_store
        self._http: httpx2.AsyncClient | None = None
        self.upstreams: UpstreamPool | None = None  # set while `running()`
        self.refresher = TokenRefresher(store, lambda: self.http)
        self.deadlines = Deadlines()  # the python handlers' timeouts
        self.front = Front(
            gate=lambda: self.gate,
            announced=store.upstream_capabilities,
            audit=self.audit,
            pool=lambda: self.upstreams,
            usable_credential=self.usable_credential,
        )

    @classmethod
    def open(cls, settings: Settings, catalog: Catalog) -> Gateway:
        catalog.raise_problems()
        return cls(settings, catalog, Store.open(settings), Store.open(settings))

    def reload(self) -> bool:
        """Read the declarations again (SIGHUP). All or nothing: a broken file keeps the running configuration
        and is logged with its file and field. Calls already running finish with the catalog they began with."""
        catalog = load_catalog(self.settings.tools_dirs)
        if catalog.upstreams:
            catalog = catalog.with_discovered(self.store.discovered_tools())
        if catalog.problems:
            for problem in catalog.problems:
                logger.error("reload refused, the previous declarations stay active: %s", problem)
            return False
        gate = Gate(self.store, catalog, self.settings.public_url)
        self.catalog, self.gate = catalog, gate
        logger.info("reloaded the declarations: %d tools", len(catalog.tools))
        return True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """The async lifetime of the app: upstream MCP servers run inside it and stop when it ends."""
        async with upstream_pool(self.store.save_upstream_capabilities) as pool:
            self.upstreams = pool
            try:
                yield self
            finally:
                self.upstreams = None

    @property
    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = make_client()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self.audit.close()
        self._audit_store.close()
        self.store.close()

    async def usable_credential(self, group: str, ready: Ready) -> tuple[Credential, Credential] | CredentialWarning:
        """The credential in full (for redaction) and as a handler sees it: an OAuth2 one refreshed when due,
        without what only the refresh needs. Raises oauth.OAuthError when it cannot be refreshed for now."""
        spec = ready.tool.credential
        if spec is None or spec.oauth is None:
            return ready.credential, ready.credential
        try:
            credential = await self.refresher.fresh(spec, ready.credential)
        except oauth.TokenExpired:
            return self.gate.expired(group, ready.tool, ready.credential.name)
        return credential, credential.only(spec.handler_fields)  # not the refresh token nor the client secret


@asynccontextmanager
async def open_gateway(settings: Settings, catalog: Catalog) -> AsyncIterator[Gateway]:
    gateway = Gateway.open(settings, catalog)
    try:
        async with gateway.running():
            yield gateway
    finally:
        await gateway.aclose()
