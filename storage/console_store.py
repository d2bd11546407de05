"""What the operator console reads: the positions under watch, their sampled prices, recent closes.

Read only. Each method is one query (one trio→asyncio crossing), so a page polling
every second costs the database three small reads.

* :meth:`ConsoleStore.positions_overview` — every aged position still under watch
  (the statuses of :data:`storage.aged_store.ACTIVE_STATUSES`, plus ``skipped`` and
  ``dust``, which an operator wants to see too), with the episode's current size and
  entry beside the ones the aged row was created with. ``a.*`` is selected whole, so
  columns that later migrations add (``hold_until``, ``hold_reason``) come along
  without a change here.
* :meth:`ConsoleStore.price_history` — the sampled price checks of one aged position
  (``price_check`` rows of ``monitoring.aged_positions_monitoring``: the price, the
  target at that moment, the distance), oldest first, the newest ``limit`` of them.
* :meth:`ConsoleStore.recent_closed` — the newest closed aged positions, with reason,
  phase, price and pnl.
"""

from __future__ import annotations

from uuid import UUID

from actors.statuses import Status
from storage.aged_store import ACTIVE_STATUSES
from storage.store_base import StoreBase

__all__ = ["CONSOLE_STATUSES", "PRICE_CHECK_EVENT", "ConsoleStore"]

# The event type the position actors give a sampled price check (actors/position/machine.py).
PRICE_CHECK_EVENT = "price_check"
# Under watch, or set aside while still open on the exchange.
CONSOLE_STATUSES = [*ACTIVE_STATUSES, str(Status.SKIPPED), str(Status.DUST)]
MAX_LIMIT = 1000


def _limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"{name} must be an integer in 1..{MAX_LIMIT}, got {value!r}")
    return value


class ConsoleStore(StoreBase):
    """The console's reads (see the module docstring)."""

    async def positions_overview(self, aged_id: UUID | None = None) -> list[dict]:
        """Aged positions still open (only ``aged_id`` when given), oldest first: the aged
        row (``a.*``) plus ``episode_quantity``, ``episode_entry_price`` and
        ``episode_status`` from the book."""
        return await self.fetch(
            """SELECT a.*, e.quantity AS episode_quantity, e.entry_price AS episode_entry_price,
                      e.status AS episode_status
               FROM monitoring.aged_positions a
               JOIN monitoring.episodes e ON e.id = a.position_id
               WHERE a.status = ANY($1::text[]) AND ($2::uuid IS NULL OR a.id = $2)
               ORDER BY a.position_opened_at, a.id""",
            CONSOLE_STATUSES,
            aged_id,
        )

    async def price_history(self, aged_id: UUID, limit: int = 200) -> list[dict]:
        """The newest ``limit`` sampled price checks of ``aged_id``, oldest first:
        ``at``, ``price``, ``target``, ``distance_percent``."""
        return await self.fetch(
            """SELECT at, price, target, distance_percent FROM (
                   SELECT id, created_at AS at, market_price AS price, target_price AS target,
                          price_distance_percent AS distance_percent
                   FROM monitoring.aged_positions_monitoring
                   WHERE aged_position_id = $1 AND event_type = $2
                   ORDER BY id DESC LIMIT $3) newest
               ORDER BY id""",
            aged_id,
            PRICE_CHECK_EVENT,
            _limit("limit", limit),
        )

    async def recent_closed(self, limit: int = 20) -> list[dict]:
        """The newest ``limit`` closed aged positions, newest close first."""
        return await self.fetch(
            """SELECT id, exchange, symbol, side, quantity, entry_price, position_opened_at, detected_at,
                      closed_at, close_reason, phase_at_close, close_price, closed_qty, actual_pnl,
                      actual_pnl_percent, close_attempts, close_order_id
               FROM monitoring.aged_positions
               WHERE status = $1
               ORDER BY closed_at DESC, id
               LIMIT $2""",
            str(Status.CLOSED),
            _limit("limit", limit),
        )
