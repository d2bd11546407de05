"""The write-ahead log of close orders (``monitoring.close_orders``).

An order's row is written before the order is sent, so that after a crash the
executor can find every order that may have reached the exchange and reconcile it.
A row belongs to an account; an account-scoped view reads only its account's rows.
"""

from __future__ import annotations

from uuid import UUID

from actors.statuses import IN_FLIGHT
from storage import ops as op
from storage.store_base import StoreBase

__all__ = ["IN_FLIGHT_STATES", "CloseOrderStore"]

IN_FLIGHT_STATES = [str(s) for s in IN_FLIGHT]


class CloseOrderStore(StoreBase):
    """Writing and reading the close orders' write-ahead rows."""

    async def record_close_order(self, row: op.RecordCloseOrder) -> None:
        """Write the WAL row of an order about to be sent. Must succeed before sending."""
        await self.write_batch([row])

    async def close_orders(self, aged_id: UUID) -> list[dict]:
        return await self.fetch(
            "SELECT * FROM monitoring.close_orders WHERE aged_position_id=$1 AND ($2::text IS NULL OR account=$2) "
            "ORDER BY attempt",
            aged_id,
            self.account,
        )

    async def inflight_close_orders(self) -> list[dict]:
        return await self.fetch(
            "SELECT * FROM monitoring.close_orders WHERE state = ANY($1::text[]) AND ($2::text IS NULL OR account=$2) "
            "ORDER BY created_at",
            IN_FLIGHT_STATES,
            self.account,
        )
