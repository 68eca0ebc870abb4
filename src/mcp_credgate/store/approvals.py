"""Approvals given and upstream rounds relayed across a 2026-07-28 round (contract §7): each is spent once, by its
nonce, on every replica (the table keeps its first name, `spent_approvals`)."""

from __future__ import annotations

from .base import StoreBase


class Approvals(StoreBase):
    def spend_nonce(self, nonce: str, expires_at: float, now: float) -> bool:
        """Spend the approval or round `nonce` names: True the first time, False ever after (until it has expired,
        when its seal refuses it anyway). Those expired by `now` are forgotten on the way."""
        with self._write(changes_setup=False) as conn:
            conn.execute("DELETE FROM spent_approvals WHERE expires_at < ?", (now,))
            cur = conn.execute(
                "INSERT INTO spent_approvals (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING",
                (nonce, expires_at),
            )
            return int(cur.rowcount) == 1
