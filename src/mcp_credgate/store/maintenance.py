"""What an operator asks of an open store as a whole: a backup copy (SQLite) and the backend's health."""

from __future__ import annotations

from pathlib import Path

from .base import StoreBase


class Maintenance(StoreBase):
    """Backup and health of a store."""

    def backup(self, target: Path) -> None:
        """A consistent copy of a SQLite store, safe while a gateway serves (the master key is not in it)."""
        with self._lock:
            self._db.backup(target)

    def health(self) -> list[str]:
        """What the backend's own checks find, and pending schema migrations."""
        with self._lock:
            problems = self._db.health()
            pending = self._db.pending_migrations()
        if pending:
            problems.append(f"database schema: migrations not applied: {', '.join(pending)}")
        return problems
