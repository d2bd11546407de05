"""The position book (``monitoring.episodes``, one row per episode) and the trading bot's book.

The detector keeps the book in line with the exchanges: an episode runs from flat to
flat on one (exchange, symbol, side). The trading bot's own ``monitoring.positions``,
when the database has it, is only read here; it is written only after a confirmed
close by the service (see :mod:`storage.batch_store`).

Every episode belongs to an account. An account-scoped view (``Database.for_account``)
reads and refreshes only its account's episodes and starts episodes in it; the
unscoped ``Database`` reads every account's and starts episodes in the account named
like the exchange (the single-account default). The trading bot's book has no
account: it is matched by exchange and symbol, as before.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from storage.store_base import StoreBase

__all__ = ["BOT_BOOK_REQUIRED", "EpisodeStore"]

# The trading bot's table, when the database has one (never created or altered here).
BOT_BOOK_REQUIRED = frozenset({"id", "exchange", "symbol", "side", "status", "opened_at"})


class EpisodeStore(StoreBase):
    """Reading and writing episodes, and reading the trading bot's book."""

    async def upsert_open_position(
        self,
        *,
        exchange: str,
        symbol: str,
        side: str,
        quantity: Decimal,
        entry_price: Decimal,
        opened_at: datetime,
        trailing_activated: bool | None = None,
        source: str = "first_seen",
        seen_at: datetime | None = None,
        exchange_updated_at: datetime | None = None,
        bot_position_id: int | None = None,
    ) -> dict:
        """Refresh the open episode of ``(exchange, symbol)``, or start one.

        An open episode on the same side keeps its ``opened_at`` and takes the new size
        and entry. On the other side (a flip) the old episode ends and a new one starts.
        ``trailing_activated=None`` keeps what the book has.
        """

        async def job(conn):
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT * FROM monitoring.episodes WHERE exchange=$1 AND symbol=$2 AND status='open' "
                    "AND account=COALESCE($3::text, exchange) FOR UPDATE",
                    exchange,
                    symbol,
                    self.account,
                )
                if row is not None and row["side"] == side:
                    return dict(
                        await conn.fetchrow(
                            """UPDATE monitoring.episodes SET quantity=$2, entry_price=$3,
                           trailing_activated=COALESCE($4, trailing_activated),
                           last_seen_at=COALESCE($5, now()), exchange_updated_at=COALESCE($6, exchange_updated_at),
                           bot_position_id=COALESCE($7, bot_position_id), updated_at=now()
                           WHERE id=$1 RETURNING *""",
                            row["id"],
                            quantity,
                            entry_price,
                            trailing_activated,
                            seen_at,
                            exchange_updated_at,
                            bot_position_id,
                        )
                    )
                return await _start_episode(
                    conn,
                    account=self.account,
                    end_previous="flip" if row is not None else None,
                    exchange=exchange,
                    symbol=symbol,
                    side=side,
                    quantity=quantity,
                    entry_price=entry_price,
                    opened_at=opened_at,
                    opened_at_source=source,
                    seen_at=seen_at,
                    exchange_updated_at=exchange_updated_at,
                    bot_position_id=bot_position_id,
                    trailing_activated=bool(trailing_activated),
                )

        return await self._call(job)

    async def start_episode(
        self,
        *,
        end_previous: str | None,
        exchange: str,
        symbol: str,
        side: str,
        quantity: Decimal,
        entry_price: Decimal,
        opened_at: datetime,
        opened_at_source: str,
        seen_at: datetime,
        exchange_updated_at: datetime | None = None,
        bot_position_id: int | None = None,
        trailing_activated: bool = False,
    ) -> dict:
        """Start a new episode, first ending the open one (``end_previous`` is its end reason)."""

        async def job(conn):
            async with conn.transaction():
                return await _start_episode(
                    conn,
                    account=self.account,
                    end_previous=end_previous,
                    exchange=exchange,
                    symbol=symbol,
                    side=side,
                    quantity=quantity,
                    entry_price=entry_price,
                    opened_at=opened_at,
                    opened_at_source=opened_at_source,
                    seen_at=seen_at,
                    exchange_updated_at=exchange_updated_at,
                    bot_position_id=bot_position_id,
                    trailing_activated=trailing_activated,
                )

        return await self._call(job)

    async def episode(self, episode_id: int) -> dict | None:
        rows = await self.fetch(
            "SELECT * FROM monitoring.episodes WHERE id=$1 AND ($2::text IS NULL OR account=$2)",
            episode_id,
            self.account,
        )
        return rows[0] if rows else None

    async def open_positions(self, exchange: str | None = None) -> list[dict]:
        """Open episodes (of one exchange, or all) of this view's account (of every account, unscoped)."""
        return await self.fetch(
            "SELECT * FROM monitoring.episodes WHERE status='open' AND ($1::text IS NULL OR exchange=$1) "
            "AND ($2::text IS NULL OR account=$2) ORDER BY id",
            exchange,
            self.account,
        )

    async def close_position(self, position_id: int, closed_at: datetime | None = None, reason: str = "flat") -> None:
        """End an episode: the exchange shows the position flat (or re-entered, or flipped)."""
        await self.execute(
            "UPDATE monitoring.episodes SET status='closed', quantity=0, closed_at=COALESCE($2, now()), "
            "end_reason=$3, updated_at=now() WHERE id=$1 AND status='open' AND ($4::text IS NULL OR account=$4)",
            position_id,
            closed_at,
            reason,
            self.account,
        )

    async def set_trailing(self, position_id: int, active: bool) -> None:
        await self.execute(
            "UPDATE monitoring.episodes SET trailing_activated=$2, updated_at=now() "
            "WHERE id=$1 AND ($3::text IS NULL OR account=$3)",
            position_id,
            active,
            self.account,
        )

    # --- the trading bot's own book (read; written only after our confirmed close) ---------

    async def bot_book_columns(self) -> frozenset[str]:
        """Columns of the trading bot's ``monitoring.positions``; empty when it has none."""
        if self._bot_columns is None:
            rows = await self.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema='monitoring' AND table_name='positions'"
            )
            cols = frozenset(r["column_name"] for r in rows)
            self._bot_columns = cols if BOT_BOOK_REQUIRED <= cols else frozenset()
        return self._bot_columns

    async def bot_positions(self) -> list[dict]:
        """The bot's open rows (``status = 'active'``), or ``[]`` when there is no bot book."""
        cols = await self.bot_book_columns()
        if not cols:
            return []
        trailing = "trailing_activated" if "trailing_activated" in cols else "false"
        return await self.fetch(
            f"SELECT id, exchange, symbol, side, opened_at, {trailing} AS trailing_activated "
            "FROM monitoring.positions WHERE status='active' ORDER BY id"
        )


async def _start_episode(
    conn,
    *,
    account: str | None,
    end_previous: str | None,
    exchange: str,
    symbol: str,
    side: str,
    quantity: Decimal,
    entry_price: Decimal,
    opened_at: datetime,
    opened_at_source: str,
    seen_at: datetime | None,
    exchange_updated_at: datetime | None,
    bot_position_id: int | None,
    trailing_activated: bool,
) -> dict:
    if end_previous is not None:
        await conn.execute(
            "UPDATE monitoring.episodes SET status='closed', quantity=0, closed_at=COALESCE($3, now()), end_reason=$4, "
            "updated_at=now() WHERE exchange=$1 AND symbol=$2 AND status='open' "
            "AND account=COALESCE($5::text, exchange)",
            exchange,
            symbol,
            seen_at,
            end_previous,
            account,
        )
    row = await conn.fetchrow(
        """INSERT INTO monitoring.episodes
           (exchange, symbol, side, quantity, entry_price, opened_at, opened_at_source, first_seen_at, last_seen_at,
            exchange_updated_at, bot_position_id, trailing_activated, account)
           VALUES ($1,$2,$3,$4,$5,$6,$7,COALESCE($8, now()),COALESCE($8, now()),$9,$10,$11,COALESCE($12::text, $1))
           RETURNING *""",
        exchange,
        symbol,
        side,
        quantity,
        entry_price,
        opened_at,
        opened_at_source,
        seen_at,
        exchange_updated_at,
        bot_position_id,
        trailing_activated,
        account,
    )
    return dict(row)
