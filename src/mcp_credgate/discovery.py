"""Listing an upstream MCP server's tools, one rule for `credgate tools` and for a gateway.

The upstream is started with its credential as a call would use it (an OAuth2 token refreshed when due,
without what only the refresh needs). What it lists is kept only redacted, with the capabilities it announced:
an upstream might put its credential into a description.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .credential import Credential
from .declarations import CredentialSpec, Upstream
from .isolation import UpstreamScope
from .redact import redactor_for
from .store import Store
from .token_refresh import TokenRefresher

if TYPE_CHECKING:  # the MCP client is imported by whoever runs the pool (`credgate` commands start faster)
    from .handlers.upstream import UpstreamPool

__all__ = ["fresh_views", "list_upstream_tools"]


async def fresh_views(
    refresher: TokenRefresher, spec: CredentialSpec | None, credential: Credential
) -> tuple[Credential, Credential]:
    """The credential in full (what redaction must know) and as a handler or upstream sees it: an OAuth2 one
    refreshed when due, without the refresh token and client secret. Raises oauth.OAuthError (TokenExpired
    when it can no longer be refreshed)."""
    if spec is None or spec.oauth is None or not credential:
        return credential, credential
    fresh = await refresher.fresh(spec, credential)
    return fresh, fresh.only(spec.handler_fields)


async def list_upstream_tools(
    store: Store,
    pool: UpstreamPool,
    refresher: TokenRefresher,
    upstream: Upstream,
    credential: Credential,
    scope: UpstreamScope | None = None,
) -> int:
    """Start (or reuse) the upstream of `scope` with the credential, cache its redacted tools and capabilities
    in the store. Returns how many tools it listed. No scope: discovery's own, an upstream that serves no
    group (`credgate tools`). Raises UpstreamError, TimeoutError, OSError, oauth.OAuthError."""
    full, view = await fresh_views(refresher, upstream.credential, credential)
    scope = scope if scope is not None else UpstreamScope.for_discovery(upstream.name, view.name)
    listings, capabilities = await pool.discover(scope, upstream.handler, view)
    store.save_upstream_tools(upstream.name, redactor_for(full).obj(listings), capabilities)
    return len(listings)
