"""The repository: trio-native async functions over asyncpg.

asyncpg is an asyncio library; this program runs on trio. One asyncio loop is opened
at the top of the program (``async with service.asyncio_bridge.open_asyncio_loop():``) and every
method here crosses into it with :func:`trio_asyncio.aio_as_trio`. A crossing costs
tens of microseconds, so callers batch writes (:meth:`Database.write_batch`) rather
than crossing once per tick.

Rows come back as plain ``dict`` objects (numeric → Decimal, timestamptz → aware
datetime, jsonb → Python objects).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Container, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import trio_asyncio

from actors.policy import PolicyConfig
from actors.position import Persist, PositionState, Settings
from actors.statuses import IN_FLIGHT, MONITORED, Status
from storage import ops as op
from storage.errors import StorageError, StorageUnavailable, WriteRejected
from storage.mapping import aged_columns, position_state
from storage.migrate import apply_migrations
from storage.statistics import statistics

log = logging.getLogger("storage.repository")

AGED_UPDATABLE = frozenset(
    {
        "status",
        "grace_started_at",
        "progressive_started_at",
        "close_triggered_at",
        "closed_at",
        "target_price",
        "breakeven_price",
        "current_loss_tolerance_percent",
        "last_price_check",
        "last_checked_price",
        "close_attempts",
        "last_close_attempt",
        "last_error_message",
        "hours_aged",
        "hours_in_grace",
        "hours_in_progressive",
        "closed_qty",
        "quantity",
        "close_price",
        "close_order_id",
        "actual_pnl",
        "actual_pnl_percent",
        "close_reason",
        "phase_at_close",
        "entry_price",
    }
)
CLOSE_ORDER_UPDATABLE = frozenset(
    {
        "state",
        "exchange_order_id",
        "filled_qty",
        "avg_price",
        "error_code",
        "error_message",
    }
)
# The trading bot's table, when the database has one (never created or altered here).
BOT_BOOK_REQUIRED = frozenset({"id", "exchange", "symbol", "side", "status", "opened_at"})
BOT_BOOK_CLOSE = frozenset({"closed_at", "exit_reason"})
ACTIVE_STATUSES = [str(s) for s in MONITORED]
IN_FLIGHT_STATES = [str(s) for s in IN_FLIGHT]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: skip asyncpg's server-side RESET ALL round trip.

    Nothing here leaves session state behind (no SET, no LISTEN; the migration lock is
    released explicitly), so the default reset would be a wasted round trip on every
    query. asyncpg still does its client-side clean-up.
    """


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=lambda v: json.dumps(v, default=str), decoder=json.loads, schema="pg_catalog"
        )


def _set_clause(fields: dict[str, Any], allowed: frozenset[str], first_param: int) -> tuple[str, list]:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
    names = sorted(fields)
    clause = ", ".join(f"{name} = ${first_param + i}" for i, name in enumerate(names))
    return clause, [fields[n] for n in names]


class Database:
    """A pool of connections to one PostgreSQL database.

    Create with ``await Database.connect(url)`` from inside an open trio-asyncio loop.
    """

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        self._bot_columns: frozenset[str] | None = None
        # After a confirmed close by the service, mark the trading bot's row closed
        # (status, closed_at, exit_reason = 'aged_<phase>'), as the original bot did.
        self.update_bot_book = True

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        command_timeout: float | None = 10.0,
        connect_timeout: float | None = 10.0,
    ) -> Database:
        pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            command_timeout=command_timeout,
            timeout=connect_timeout,
            reset=_keep_session,
        )
        return cls(pool)

    async def close(self) -> None:
        await trio_asyncio.aio_as_trio(self._pool.close)()

    # --- plumbing --------------------------------------------------------------------

    async def _call(self, fn, *args):
        """Run ``fn(conn, *args)`` (an asyncio coroutine function) on a pooled connection.

        The driver's errors leave as :mod:`storage.errors`.
        """

        async def job():
            async with self._pool.acquire() as conn:
                return await fn(conn, *args)

        try:
            return await trio_asyncio.aio_as_trio(job)()
        except StorageError:
            raise
        except Exception as exc:
            raise _storage_error(exc) from exc

    async def fetch(self, sql: str, *args) -> list[dict]:
        async def job(conn):
            return [dict(r) for r in await conn.fetch(sql, *args)]

        return await self._call(job)

    async def fetchval(self, sql: str, *args):
        async def job(conn):
            return await conn.fetchval(sql, *args)

        return await self._call(job)

    async def execute(self, sql: str, *args) -> str:
        async def job(conn):
            return await conn.execute(sql, *args)

        return await self._call(job)

    async def migrate(self) -> list[int]:
        """Apply missing migrations; return the versions applied now."""
        return await self._call(apply_migrations)

    # --- the position book: one row per episode ----------------------------------------

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
                    "SELECT * FROM monitoring.episodes WHERE exchange=$1 AND symbol=$2 AND status='open' FOR UPDATE",
                    exchange,
                    symbol,
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
        rows = await self.fetch("SELECT * FROM monitoring.episodes WHERE id=$1", episode_id)
        return rows[0] if rows else None

    async def open_positions(self, exchange: str | None = None) -> list[dict]:
        """Open episodes (of one exchange, or all)."""
        if exchange is None:
            return await self.fetch("SELECT * FROM monitoring.episodes WHERE status='open' ORDER BY id")
        return await self.fetch(
            "SELECT * FROM monitoring.episodes WHERE status='open' AND exchange=$1 ORDER BY id", exchange
        )

    async def close_position(self, position_id: int, closed_at: datetime | None = None, reason: str = "flat") -> None:
        """End an episode: the exchange shows the position flat (or re-entered, or flipped)."""
        await self.execute(
            "UPDATE monitoring.episodes SET status='closed', quantity=0, closed_at=COALESCE($2, now()), "
            "end_reason=$3, updated_at=now() WHERE id=$1 AND status='open'",
            position_id,
            closed_at,
            reason,
        )

    async def set_trailing(self, position_id: int, active: bool) -> None:
        await self.execute(
            "UPDATE monitoring.episodes SET trailing_activated=$2, updated_at=now() WHERE id=$1", position_id, active
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

    # --- aged positions ----------------------------------------------------------------

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
                    grace_started_at, progressive_started_at)
                   VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,
                           CASE WHEN $9::text IN ('grace_active','progressive_active') THEN $15::timestamptz END,
                           CASE WHEN $9::text = 'progressive_active' THEN $16::timestamptz END)
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
            )
            if row is not None:
                return dict(row), True
            row = await conn.fetchrow("SELECT * FROM monitoring.aged_positions WHERE position_id=$1", position["id"])
            return dict(row), False

        return await self._call(job)

    async def aged_position(self, aged_id: UUID) -> dict | None:
        rows = await self.fetch("SELECT * FROM monitoring.aged_positions WHERE id=$1", aged_id)
        return rows[0] if rows else None

    async def aged_position_for(self, position_id: int) -> dict | None:
        rows = await self.fetch("SELECT * FROM monitoring.aged_positions WHERE position_id=$1", position_id)
        return rows[0] if rows else None

    async def all_aged_positions(self) -> list[dict]:
        """Every aged position, closed or not, oldest detection first."""
        return await self.fetch("SELECT * FROM monitoring.aged_positions ORDER BY detected_at")

    async def active_aged_positions(self) -> list[dict]:
        return await self.fetch(
            "SELECT * FROM monitoring.aged_positions WHERE status = ANY($1::text[]) ORDER BY detected_at",
            ACTIVE_STATUSES,
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
        rows = await self.fetch("SELECT * FROM monitoring.aged_positions WHERE status <> $1", Status.CLOSED.value)
        open_ids = {r["id"] for r in rows}
        wanted = [r for r in rows if r["id"] not in skip]
        if not wanted:
            return open_ids, []
        inflight = {
            r["aged_position_id"]
            for r in await self.fetch(
                "SELECT DISTINCT aged_position_id FROM monitoring.close_orders "
                "WHERE state = ANY($1::text[]) AND aged_position_id = ANY($2::uuid[])",
                IN_FLIGHT_STATES,
                [r["id"] for r in wanted],
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
            "SELECT * FROM monitoring.aged_positions_history WHERE aged_position_id=$1 ORDER BY id", aged_id
        )

    async def events(self, aged_id: UUID, event_type: str | None = None) -> list[dict]:
        if event_type is None:
            return await self.fetch(
                "SELECT * FROM monitoring.aged_positions_monitoring WHERE aged_position_id=$1 ORDER BY id", aged_id
            )
        return await self.fetch(
            "SELECT * FROM monitoring.aged_positions_monitoring WHERE aged_position_id=$1 AND event_type=$2 "
            "ORDER BY id",
            aged_id,
            event_type,
        )

    # --- the write-ahead log of close orders -------------------------------------------

    async def record_close_order(self, row: op.RecordCloseOrder) -> None:
        """Write the WAL row of an order about to be sent. Must succeed before sending."""
        await self.write_batch([row])

    async def close_orders(self, aged_id: UUID) -> list[dict]:
        return await self.fetch(
            "SELECT * FROM monitoring.close_orders WHERE aged_position_id=$1 ORDER BY attempt", aged_id
        )

    async def inflight_close_orders(self) -> list[dict]:
        return await self.fetch(
            "SELECT * FROM monitoring.close_orders WHERE state = ANY($1::text[]) ORDER BY created_at", IN_FLIGHT_STATES
        )

    # --- batched writes ----------------------------------------------------------------

    async def write_batch(self, batch: Sequence[op.WriteOp]) -> None:
        """Apply ``batch`` in order, in one transaction (one trio→asyncio crossing).

        Runs of :class:`~storage.ops.AddEvent` are written with one ``executemany``.
        """
        bot = (
            self.update_bot_book and bool(BOT_BOOK_CLOSE <= await self.bot_book_columns())
            if any(isinstance(item, op.ClosePosition) and item.exit_reason for item in batch)
            else False
        )

        async def job(conn):
            if len(batch) == 1 and not isinstance(batch[0], (op.AddEvent, op.ClosePosition)):
                await _apply(conn, batch[0], bot)  # one statement is atomic on its own: one round trip
                return
            async with conn.transaction():
                pending_events: list[tuple] = []
                for item in batch:
                    if isinstance(item, op.AddEvent):
                        pending_events.append(item.as_row())
                        continue
                    if pending_events:
                        await _insert_events(conn, pending_events)
                        pending_events = []
                    await _apply(conn, item, bot)
                if pending_events:
                    await _insert_events(conn, pending_events)

        await self._call(job)

    # --- statistics ----------------------------------------------------------------------

    async def statistics(self, days: float = 7, now: datetime | None = None) -> dict:
        """Counts, success rate, averages at close, by close reason, retries, close latency
        (see :func:`storage.statistics.statistics`)."""
        return await statistics(self, days, now)


_UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


def _storage_error(exc: Exception) -> Exception:
    """The :mod:`storage.errors` exception for a driver (or our own) error; others unchanged."""
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailable(f"{type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        (
            asyncpg.IntegrityConstraintViolationError,
            asyncpg.DataError,
            asyncpg.exceptions.RaiseError,
            ValueError,
            TypeError,
        ),
    ) or (
        isinstance(exc, asyncpg.PostgresError)
        and str(getattr(exc, "sqlstate", "") or "").startswith(("22", "23", "42"))
    ):
        return WriteRejected(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StorageError(f"{type(exc).__name__}: {exc}")
    return exc


async def _insert_events(conn, rows: Iterable[tuple]) -> None:
    await conn.executemany(
        """INSERT INTO monitoring.aged_positions_monitoring
           (aged_position_id, event_type, market_price, target_price, price_distance_percent,
            action_taken, success, error_message, event_metadata, created_at)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,COALESCE($10, now()))""",
        list(rows),
    )


async def _start_episode(
    conn,
    *,
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
            "updated_at=now() WHERE exchange=$1 AND symbol=$2 AND status='open'",
            exchange,
            symbol,
            seen_at,
            end_previous,
        )
    row = await conn.fetchrow(
        """INSERT INTO monitoring.episodes
           (exchange, symbol, side, quantity, entry_price, opened_at, opened_at_source, first_seen_at, last_seen_at,
            exchange_updated_at, bot_position_id, trailing_activated)
           VALUES ($1,$2,$3,$4,$5,$6,$7,COALESCE($8, now()),COALESCE($8, now()),$9,$10,$11) RETURNING *""",
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
    )
    return dict(row)


async def _apply(conn, item: op.WriteOp, bot_book: bool = False) -> None:
    if isinstance(item, op.UpdateAged):
        columns = aged_columns(item.changes)
        if not columns:
            return
        clause, values = _set_clause(columns, AGED_UPDATABLE, 2)
        await conn.execute(f"UPDATE monitoring.aged_positions SET {clause} WHERE id=$1", item.aged_id, *values)
    elif isinstance(item, op.RecordCloseOrder):
        await conn.execute(
            """INSERT INTO monitoring.close_orders
               (client_order_id, aged_position_id, attempt, exchange, symbol, side, order_type,
                requested_qty, limit_price, state)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'pending')
               ON CONFLICT (client_order_id) DO NOTHING""",
            item.client_order_id,
            item.aged_id,
            item.attempt,
            item.exchange,
            item.symbol,
            item.side,
            item.order_type,
            item.requested_qty,
            item.limit_price,
        )
    elif isinstance(item, op.UpdateCloseOrder):
        clause, values = _set_clause(dict(item.fields), CLOSE_ORDER_UPDATABLE, 2)
        await conn.execute(
            f"UPDATE monitoring.close_orders SET {clause}, updated_at=now() WHERE client_order_id=$1",
            item.client_order_id,
            *values,
        )
    elif isinstance(item, op.CloseVanished):
        await conn.execute(
            "UPDATE monitoring.aged_positions SET status='closed', close_reason='manual', closed_at=$2 "
            "WHERE id=$1 AND status <> 'closed'",
            item.aged_id,
            item.closed_at,
        )
    elif isinstance(item, op.ClosePosition):
        bot_id = await conn.fetchval(
            "UPDATE monitoring.episodes SET status='closed', quantity=0, closed_at=COALESCE($2, now()), "
            "end_reason='closed_by_service', updated_at=now() WHERE id=$1 AND status='open' RETURNING bot_position_id",
            item.position_id,
            item.closed_at,
        )
        if bot_book and bot_id is not None and item.exit_reason:
            try:
                async with conn.transaction():  # a savepoint: the bot's table must never block our writes
                    await conn.execute(
                        "UPDATE monitoring.positions SET status='closed', closed_at=COALESCE($2, now()), "
                        "exit_reason=$3 WHERE id=$1 AND status='active'",
                        bot_id,
                        item.closed_at,
                        item.exit_reason,
                    )
            except asyncpg.PostgresError as exc:
                log.error("could not mark the trading bot's position %s closed: %s", bot_id, exc)
    else:
        raise TypeError(f"unknown write op {item!r}")
