"""The gateway's app-lifetime parts, opened once and closed once.

    gateway = Gateway.open(settings, catalog)   # declarations, store, gate, audit writer, refresher
    async with gateway.running():               # upstream MCP servers run inside
        ...                                     # serve: `server.build_server(gateway, identify)`
    await gateway.aclose()                      # HTTP client, audit (flushed), stores

Per-call work is done above it (`server.ToolCalls`, `front.Front`), with the parts it holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2

from . import oauth
from .allow import AllowEntry
from .audit import AuditLog
from .caller import Caller
from .config import Settings
from .credential import Credential
from .deadlines import Deadlines
from .declarations import Catalog, CredentialField, load_catalog
from .discovery import fresh_views, list_upstream_tools
from .egress_proxy import EgressEvent
from .front import Front
from .gate import CredentialWarning, Gate, Ready
from .handlers.egress import PLACEHOLDER_KEY_PURPOSE, EgressKit
from .handlers.http import make_client
from .handlers.upstream import UpstreamError, UpstreamPool, upstream_pool
from .isolation import UpstreamScope
from .logs import new_ref
from .rounds import Rounds
from .sandbox import SandboxPolicy
from .setup_links import FixedPages, PageServer, SetupLinks
from .store import Store
from .token_refresh import TokenRefresher

logger = logging.getLogger("credgate.server")  # the name its reload messages always had
DISCOVERY_RETRY = 60.0  # seconds before an upstream whose tools could not be listed is tried again


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
        # the connection that counts calls against budgets: the audit's, whose writes need no disk wait
        audit_store.relax_durability()
        self.counts = audit_store
        self._http: httpx2.AsyncClient | None = None
        self.upstreams: UpstreamPool | None = None  # set while `running()`
        self.refresher = TokenRefresher(store, lambda: self.http)
        self.deadlines = Deadlines()  # the python handlers' timeouts
        self.setup_links = SetupLinks(store)  # one call's setup pages (contract §7)
        self.rounds = Rounds(store)  # upstreams' input-required rounds, relayed (contract §7)
        self.pages: PageServer = FixedPages(settings.public_url)  # where they are served (stdio: its own)
        self._discovering: dict[str, anyio.Lock] = {}  # upstream → held while its tools are being listed
        self._retry_after: dict[str, float] = {}  # upstream → when listing it may be tried again
        self.front = Front(
            gate=lambda: self.gate,
            announced=store.upstream_capabilities,
            audit=self.audit,
            pool=lambda: self.upstreams,
            usable_credential=self.usable_credential,
            rounds=self.rounds,
        )

    @classmethod
    def open(cls, settings: Settings, catalog: Catalog) -> Gateway:
        catalog.raise_problems()
        return cls(settings, catalog, Store.open(settings), Store.open(settings))

    def reload(self) -> bool:
        """Read the declarations again (SIGHUP). All or nothing: a broken file keeps the running configuration
        and is logged with its file and field. Calls already running finish with the catalog they began with."""
        catalog = load_catalog(self.settings.tools_dirs, self.settings.protected_paths)
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
        egress = EgressKit.new(
            self.store.derived_key(PLACEHOLDER_KEY_PURPOSE), self.credential_fields, self.egress_refused
        )
        async with upstream_pool(
            self.store.save_upstream_capabilities,
            SandboxPolicy.of(self.settings),
            self.own_pages,
            self.front.publish,
            egress,
        ) as pool:
            self.upstreams = pool
            try:
                yield self
            finally:
                self.upstreams = None

    def credential_fields(self, upstream: str) -> tuple[CredentialField, ...]:
        """The fields of the credential an upstream declares (as the declarations are now)."""
        found = self.catalog.upstreams.get(upstream)
        return found.credential.fields if found is not None and found.credential is not None else ()

    def egress_refused(self, scope: UpstreamScope, event: EgressEvent) -> None:
        """An upstream's egress proxy refused a request: logged with a ref and audited (outcome
        `egress_blocked` for a placeholder sent toward a host not declared for it, `egress_denied` for a host
        not declared). The tool is the upstream's declaration; no value is in either."""
        ref = new_ref()
        if event.kind == "blocked_placeholder":
            outcome = "egress_blocked"
            logger.warning(
                "upstream %s (group %s, credential %s) sent a placeholder toward %s (%s): blocked as an "
                "exfiltration attempt (ref: %s)",
                scope.server,
                scope.group or "-",
                scope.credential,
                event.host,
                event.field,
                ref,
            )
        else:
            outcome = "egress_denied"
        self.audit.record(
            scope.group or "-", scope.agent, scope.server, scope.credential, outcome, time.perf_counter(), ref
        )

    def own_pages(self) -> list[str]:
        """Where the gateway's own pages are: its public URL, and its setup links' page server once it runs."""
        listening = self.pages.listening
        return [self.settings.public_url] + ([listening] if listening else [])

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

    async def usable_credential(
        self, group: str, ready: Ready[Any]
    ) -> tuple[Credential, Credential] | CredentialWarning:
        """The credential in full (for redaction) and as a handler sees it: an OAuth2 one refreshed when due,
        without what only the refresh needs. Raises oauth.OAuthError when it cannot be refreshed for now."""
        spec = ready.tool.credential
        if spec is None or spec.oauth is None:
            return ready.credential, ready.credential
        try:
            return await fresh_views(self.refresher, spec, ready.credential)
        except oauth.TokenExpired:
            return self.gate.expired(group, ready.tool, ready.credential.name, ready.user)

    async def discover_for(self, caller: Caller) -> None:
        """List the tools of the upstreams the caller's group uses whose tools were never listed (declared,
        but `credgate tools` not run since), starting each with the group's credential: at its first
        tools/list. The upstream is the caller's own (its scope), which then serves its calls: no other
        group's. An upstream that cannot be listed is logged and tried again after a while, not at every
        listing."""
        group = caller.group
        pool = self.upstreams
        if pool is None or not any(not self.catalog.upstream_tools(n) for n in self.catalog.upstreams):
            return
        wanted: dict[str, str] = {}  # upstream → the group's allow entry that names it
        for entry in self.store.allowed_tools(group):
            upstream = AllowEntry.parse(entry).upstream or self.catalog.undiscovered_upstream(entry)
            if upstream is not None and not self.catalog.upstream_tools(upstream):
                wanted.setdefault(upstream, entry)
        for upstream, entry in wanted.items():
            async with self._discovering.setdefault(upstream, anyio.Lock()):
                if self.catalog.upstream_tools(upstream) or time.monotonic() < self._retry_after.get(upstream, 0):
                    continue  # listed meanwhile by another request, or failed a moment ago
                decision = self.gate.check_upstream(group, upstream, entry, caller.user)
                if not isinstance(decision, Ready):
                    continue  # no usable credential: a call gives the agent the warning
                scope = caller.upstream_scope(upstream, decision.tool.handler, decision.credential.name)
                try:
                    count = await list_upstream_tools(
                        self.store, pool, self.refresher, decision.tool, decision.credential, scope
                    )
                except (UpstreamError, oauth.OAuthError, TimeoutError, OSError) as exc:
                    self._retry_after[upstream] = time.monotonic() + DISCOVERY_RETRY
                    why = str(exc) if isinstance(exc, UpstreamError | oauth.OAuthError) else type(exc).__name__
                    logger.warning("upstream %s: its tools could not be listed for group %s (%s)", upstream, group, why)
                    continue
                self.catalog = self.catalog.rediscovered(self.store.discovered_tools())
                self.gate = Gate(self.store, self.catalog, self.settings.public_url)
                logger.info("upstream %s: listed its %d tools (first use, group %s)", upstream, count, group)


@asynccontextmanager
async def open_gateway(settings: Settings, catalog: Catalog) -> AsyncIterator[Gateway]:
    gateway = Gateway.open(settings, catalog)
    try:
        async with gateway.running():
            yield gateway
    finally:
        await gateway.aclose()
