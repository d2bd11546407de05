"""Aged positions: their rows, their loading for the actors and for recovery, their events and history.

An aged position is created once per episode, the instant it crosses the age limit;
after that its position actor owns it and writes to it through batched
:class:`~storage.ops.UpdateAged` operations. The reads here give an actor its state
(:func:`storage.mapping.position_state`), whether at start, after a crash, or in bulk
when the service recovers every position not closed.

An aged position belongs to its episode's account. An account-scoped view reads only
its account's aged positions (and their events, history and close orders); the
unscoped ``Database`` reads every account's.
"""

from __future__ import annotations

from collections.abc import Container
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from actors.policy import PolicyConfig
from actors.position import Persist, PositionState, Settings
from actors.statuses import IN_FLIGHT, MONITORED, Status
from storage import ops as op
from storage.close_order_store import IN_FLIGHT_STATES
from storage.errors import WriteRejected
from storage.mapping import position_state
from storage.store_base import StoreBase

__all__ = ["ACTIVE_STATUSES", "AgedStore"]

ACTIVE_STATUSES = [str(s) for s in MONITORED]


class AgedStore(StoreBase):
    """Creating, reading and updating aged positions; their events and history."""

    async def create_aged_position(
        self,
        position: dict,
        *,
        detected_at: datetime,
        status: str,
        target_price: Decimal | None,
        breakeven_price: Decimal,
        loss_tolerance_percent: Decimal,
        hours_aged: Decimal,
        config: dict,
        grace_started_at: datetime | None = None,
        progressive_started_at: datetime | None = None,
    ) -> tuple[dict, bool]:
        """Create the aged row for ``position`` unless it exists. Returns ``(row, created)``.

        ``grace_started_at``/``progressive_started_at`` are policy instants (derived from
        the open time), written only for the phases the status has reached.
        """

        async def job(conn):
            row = await conn.fetchrow(
                """INSERT INTO monitoring.aged_positions
                   (position_id, symbol, exchange, side, entry_price, quantity, position_opened_at, detected_at,
                    status, target_price, breakeven_price, current_loss_tolerance_percent, hours_aged, config,
                    grace_started_at, progressive_started_at, account)
                   VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,
                           CASE WHEN $9::text IN ('grace_active','progressive_active') THEN $15::timestamptz END,
                           CASE WHEN $9::text = 'progressive_active' THEN $16::timestamptz END,
                           COALESCE($17::text, (SELECT e.account FROM monitoring.episodes e WHERE e.id = $1), $3))
                   ON CONFLICT (position_id) DO NOTHING RETURNING *""",
                position["id"],
                position["symbol"],
                position["exchange"],
                position["side"],
                position["entry_price"],
                position["quantity"],
                position["opened_at"],
                detected_at,
                status,
                target_price,
                breakeven_price,
                loss_tolerance_percent,
                hours_aged,
                config,
                grace_started_at or detected_at,
                progressive_started_at or detected_at,
                self.account,
            )
            if row is not None:
                return dict(row), True
            row = await conn.fetchrow(
                "SELECT * FROM monitoring.aged_positions WHERE position_id=$1 AND ($2::text IS NULL OR account=$2)",
                position["id"],
                self.account,
            )
            if row is None:
                raise WriteRejected(f"episode {position['id']} has its aged position in another account")
            return dict(row), False

        return await self._call(job)

    async def aged_position(self, aged_id: UUID) -> dict | None:
        rows = await self.fetch(
            "SELECT * FROM monitoring.aged_positions WHERE id=$1 AND ($2::text IS NULL OR account=$2)",
            aged_id,
            self.account,
        )
        return rows[0] if rows else None

    async def aged_position_for(self, position_id: int) -> dict | None:
        rows = await self.fetch(
            "SELECT * FROM monitoring.aged_positions WHERE position_id=$1 AND ($2::text IS NULL OR account=$2)",
            position_id,
            self.account,
        )
        return rows[0] if rows else None

    async def all_aged_positions(self) -> list[dict]:
        """Every aged position, closed or not, oldest detection first."""
        return await self.fetch(
            "SELECT * FROM monitoring.aged_positions WHERE ($1::text IS NULL OR account=$1) ORDER BY detected_at",
            self.account,
        )

    async def active_aged_positions(self) -> list[dict]:
        return await self.fetch(
            "SELECT * FROM monitoring.aged_positions WHERE status = ANY($1::text[]) "
            "AND ($2::text IS NULL OR account=$2) ORDER BY detected_at",
            ACTIVE_STATUSES,
            self.account,
        )

    async def load_position(self, aged_id: UUID, config: PolicyConfig, settings: Settings) -> PositionState | None:
        """The state of aged position ``aged_id`` for its actor, or None if there is no such row."""
        row = await self.aged_position(aged_id)
        if row is None:
            return None
        orders = await self.close_orders(aged_id)
        return position_state(row, config, settings, inflight_orders=any(o["state"] in IN_FLIGHT for o in orders))

    async def load_for_recovery(
        self, config: PolicyConfig, settings: Settings, skip: Container[UUID] = ()
    ) -> tuple[set[UUID], list[PositionState]]:
        """The ids of every aged position not closed, and the states of those not in ``skip``.

        Two queries for all of them, however many there are.
        """
        rows = await self.fetch(
            "SELECT * FROM monitoring.aged_positions WHERE status <> $1 AND ($2::text IS NULL OR account=$2)",
            Status.CLOSED.value,
            self.account,
        )
        open_ids = {r["id"] for r in rows}
        wanted = [r for r in rows if r["id"] not in skip]
        if not wanted:
            return open_ids, []
        inflight = {
            r["aged_position_id"]
            for r in await self.fetch(
                "SELECT DISTINCT aged_position_id FROM monitoring.close_orders "
                "WHERE state = ANY($1::text[]) AND aged_position_id = ANY($2::uuid[]) "
                "AND ($3::text IS NULL OR account=$3)",
                IN_FLIGHT_STATES,
                [r["id"] for r in wanted],
                self.account,
            )
        }
        return open_ids, [position_state(r, config, settings, inflight_orders=r["id"] in inflight) for r in wanted]

    async def update_aged_position(self, aged_id: UUID, **changes) -> None:
        """Apply ``changes`` (:class:`~actors.position.Persist` fields) to an aged position now."""
        try:
            persist = Persist(**changes)
        except TypeError as exc:
            raise WriteRejected(f"not updatable: {exc}") from exc
        await self.write_batch([op.UpdateAged(aged_id, persist)])

    async def history(self, aged_id: UUID) -> list[dict]:
        return await self.fetch(
            "SELECT h.* FROM monitoring.aged_positions_history h JOIN monitoring.aged_positions a "
            "ON a.id = h.aged_position_id WHERE h.aged_position_id=$1 AND ($2::text IS NULL OR a.account=$2) "
            "ORDER BY h.id",
            aged_id,
            self.account,
        )

    async def events(self, aged_id: UUID, event_type: str | None = None) -> list[dict]:
        return await self.fetch(
            "SELECT m.* FROM monitoring.aged_positions_monitoring m JOIN monitoring.aged_positions a "
            "ON a.id = m.aged_position_id WHERE m.aged_position_id=$1 AND ($2::text IS NULL OR m.event_type=$2) "
            "AND ($3::text IS NULL OR a.account=$3) ORDER BY m.id",
            aged_id,
            event_type,
            self.account,
        )
