"""Health probes for load balancers and orchestrators (contract §9): `GET /healthz` (the process answers) and
`GET /readyz` (it can serve: every check passes, else 503 naming the first that fails).

No authentication and no Host/Origin check on these two paths alone (a probe sends the pod's address as Host:
`guard.PROBE_PATHS`). The bodies say which check failed and nothing else: no path, version or backend. Each
check runs in a worker thread, bounded in time: a store that hangs is a store that is not ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .audit import BACKLOG
from .errors import CredgateError
from .gateway import Gateway
from .store import Store

__all__ = ["CHECK_SECONDS", "Check", "gateway_checks", "probe_routes", "store_checks"]

logger = logging.getLogger("credgate.probes")

CHECK_SECONDS = 3.0
Check = Callable[[], None]  # raises when what it checks is not fine
_NO_STORE = {"Cache-Control": "no-store"}


def probe_routes(checks: Mapping[str, Check]) -> list[Route]:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"}, headers=_NO_STORE)

    async def readyz(request: Request) -> JSONResponse:
        for name, check in checks.items():
            try:
                with anyio.fail_after(CHECK_SECONDS):
                    await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
            except Exception as exc:
                text = str(exc) if isinstance(exc, CredgateError) else type(exc).__name__
                logger.warning("not ready: %s (%s)", name, text or "timed out")  # the log may name paths
                return JSONResponse({"status": "not ready", "failing": name}, status_code=503, headers=_NO_STORE)
        return JSONResponse({"status": "ready", "checks": list(checks)}, headers=_NO_STORE)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


def store_checks(store: Store) -> dict[str, Check]:
    """The store answers a read; the key it was opened with is still there and opens it."""
    return {"store": store.check_reachable, "key": store.check_key}


def gateway_checks(gateway: Gateway) -> dict[str, Check]:
    """The gateway's store and key, its declarations loaded, and its audit backlog under its bound."""

    def declarations() -> None:
        catalog = gateway.catalog
        if catalog.problems and not (catalog.tools or catalog.upstreams):
            raise CredgateError("no declaration loads")

    def audit() -> None:
        if gateway.audit.backlog >= BACKLOG:
            raise CredgateError(f"the audit backlog is full ({BACKLOG} rows)")

    return {**store_checks(gateway.store), "declarations": declarations, "audit": audit}
