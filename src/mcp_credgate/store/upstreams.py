"""What upstream MCP servers were found to offer: their tool listings and the capabilities they announced,
cached in the store at discovery (their bindings are in `groups`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from .base import StoreBase, now
from .database import Database


class Upstreams(StoreBase):
    """The discovered tools and capabilities of upstream MCP servers."""

    def save_upstream_tools(
        self,
        upstream: str,
        listings: Sequence[Mapping[str, object]],
        capabilities: Mapping[str, object] | None = None,
    ) -> None:
        """Replace the cached tool list of an upstream MCP server (name, description, inputSchema) and the
        capabilities it announced (tools alone when not given)."""
        stamp = now()
        with self._write() as conn:
            conn.execute("DELETE FROM upstream_tools WHERE upstream = ?", (upstream,))
            conn.executemany(
                "INSERT INTO upstream_tools (upstream, tool, listing, discovered_at) VALUES (?, ?, ?, ?)",
                [(upstream, str(t["name"]), json.dumps(t), stamp) for t in listings],
            )
            _save_capabilities(conn, upstream, {"tools": {}} if capabilities is None else capabilities, stamp)

    def save_upstream_capabilities(self, upstream: str, capabilities: Mapping[str, object]) -> None:
        """Record what a running upstream announced, when it differs from what was cached."""
        if self.upstream_capabilities().get(upstream) != capabilities:
            with self._write() as conn:
                _save_capabilities(conn, upstream, capabilities, now())

    def discovered_tools(self) -> dict[str, list[dict[str, object]]]:
        out: dict[str, list[dict[str, object]]] = {}
        for r in self._query("SELECT upstream, listing FROM upstream_tools ORDER BY upstream, tool"):
            out.setdefault(r["upstream"], []).append(json.loads(r["listing"]))
        return out

    def upstream_capabilities(self) -> dict[str, dict[str, object]]:
        """Upstream MCP server → the capabilities it announced when last started or discovered."""
        rows = self._query("SELECT upstream, capabilities FROM upstream_servers ORDER BY upstream")
        return {r["upstream"]: json.loads(r["capabilities"]) for r in rows}


def _save_capabilities(conn: Database, upstream: str, capabilities: Mapping[str, object], stamp: str) -> None:
    conn.execute(
        "INSERT INTO upstream_servers (upstream, capabilities, discovered_at) VALUES (?, ?, ?)"
        " ON CONFLICT (upstream) DO UPDATE SET capabilities = excluded.capabilities,"
        " discovered_at = excluded.discovered_at",
        (upstream, json.dumps(capabilities, sort_keys=True), stamp),
    )
