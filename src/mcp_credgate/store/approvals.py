"""Approvals given across a 2026-07-28 round (contract §7): each is spent once, by its nonce, on every replica."""

from __future__ import annotations

from .base import StoreBase


class Approvals(StoreBase):
    def spend_approval(self, nonce: str, expires_at: float, now: float) -> bool:
        """Spend the approval `nonce` names: True the first time, False ever after (until it has expired, when
        its signature refuses it anyway). Approvals expired by `now` are forgotten on the way."""
        with self._write(changes_setup=False) as conn:
            conn.execute("DELETE FROM spent_approvals WHERE expires_at < ?", (now,))
            cur = conn.execute(
                "INSERT INTO spent_approvals (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING",
                (nonce, expires_at),
            )
            return int(cur.rowcount) == 1
