"""Applying a batch of write operations (:mod:`storage.ops`) in one transaction.

The storage writer hands over what actors submitted, in order; one batch is one
trio→asyncio crossing and one transaction. Runs of events go in with one
``executemany``. Every operation is applied by fixed SQL, and an update may only name
columns from a fixed list (:data:`AGED_UPDATABLE`, :data:`CLOSE_ORDER_UPDATABLE`).
A confirmed close also marks the trading bot's row closed, when its table has the
columns for it (:data:`BOT_BOOK_CLOSE`); that write can never block ours.

An account-scoped view writes only its account's rows: updates of another account's
rows change nothing, and a close order's row is written in the view's account (the
unscoped ``Database`` writes it in the account named like its exchange). A *fenced*
view (one given a lease token) starts every batch's transaction with
``monitoring.check_lease(account, token)`` and writes its close orders under that
token; when the lease is no longer that token's, the batch raises
:exc:`~storage.errors.LeaseLost` and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from storage import ops as op
from storage.errors import LeaseLost
from storage.mapping import aged_columns
from storage.store_base import StoreBase

__all__ = ["AGED_UPDATABLE", "BOT_BOOK_CLOSE", "CLOSE_ORDER_UPDATABLE", "BatchStore"]

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
# The columns the trading bot's table needs for its row to be marked closed after our close.
BOT_BOOK_CLOSE = frozenset({"closed_at", "exit_reason"})


def _set_clause(fields: dict[str, Any], allowed: frozenset[str], first_param: int) -> tuple[str, list]:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
    names = sorted(fields)
    clause = ", ".join(f"{name} = ${first_param + i}" for i, name in enumerate(names))
    return clause, [fields[n] for n in names]


class BatchStore(StoreBase):
    """The batch applier: :meth:`write_batch`."""

    async def write_batch(self, batch: Sequence[op.WriteOp]) -> None:
        """Apply ``batch`` in order, in one transaction (one trio→asyncio crossing).

        Runs of :class:`~storage.ops.AddEvent` are written with one ``executemany``. A
        fenced view raises :exc:`~storage.errors.LeaseLost` (nothing written) when its
        lease token is gone or no longer the account's live lease.
        """
        account = self.account
        token: int | None = None
        if self._lease_token is not None:
            token = self._lease_token()
            if token is None:
                raise LeaseLost(f"account {account}: lease lost, no lease token held", account)
        bot = (
            self.update_bot_book and bool(BOT_BOOK_CLOSE <= await self.bot_book_columns())
            if any(isinstance(item, op.ClosePosition) and item.exit_reason for item in batch)
            else False
        )

        async def job(conn):
            if token is None and len(batch) == 1 and not isinstance(batch[0], (op.AddEvent, op.ClosePosition)):
                await _apply(conn, batch[0], bot, account)  # one statement is atomic on its own: one round trip
                return
            async with conn.transaction():
                if token is not None:
                    # Read FOR SHARE: a takeover of the lease waits until this transaction ends.
                    await conn.execute("SELECT monitoring.check_lease($1, $2)", account, token)
                pending_events: list[tuple] = []
                for item in batch:
                    if isinstance(item, op.AddEvent):
                        pending_events.append(item.as_row())
                        continue
                    if pending_events:
                        await _insert_events(conn, pending_events)
                        pending_events = []
                    await _apply(conn, item, bot, account, token)
                if pending_events:
                    await _insert_events(conn, pending_events)

        await self._call(job)


async def _insert_events(conn, rows: Iterable[tuple]) -> None:
    await conn.executemany(
        """INSERT INTO monitoring.aged_positions_monitoring
           (aged_position_id, event_type, market_price, target_price, price_distance_percent,
            action_taken, success, error_message, event_metadata, created_at)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,COALESCE($10, now()))""",
        list(rows),
    )


async def _apply(
    conn, item: op.WriteOp, bot_book: bool = False, account: str | None = None, token: int | None = None
) -> None:
    """Apply one write; ``account`` scopes it (None: unscoped), ``token`` fences close orders."""
    if isinstance(item, op.UpdateAged):
        columns = aged_columns(item.changes)
        if not columns:
            return
        clause, values = _set_clause(columns, AGED_UPDATABLE, 2)
        scope = len(values) + 2
        await conn.execute(
            f"UPDATE monitoring.aged_positions SET {clause} "
            f"WHERE id=$1 AND (${scope}::text IS NULL OR account=${scope})",
            item.aged_id,
            *values,
            account,
        )
    elif isinstance(item, op.RecordCloseOrder):
        await conn.execute(
            """INSERT INTO monitoring.close_orders
               (client_order_id, aged_position_id, attempt, exchange, symbol, side, order_type,
                requested_qty, limit_price, state, account, lease_token)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'pending',COALESCE($10::text, $4),$11)
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
            account,
            token,
        )
    elif isinstance(item, op.UpdateCloseOrder):
        clause, values = _set_clause(dict(item.fields), CLOSE_ORDER_UPDATABLE, 2)
        scope = len(values) + 2
        await conn.execute(
            f"UPDATE monitoring.close_orders SET {clause}, updated_at=now() WHERE client_order_id=$1 "
            f"AND (${scope}::text IS NULL OR account=${scope})",
            item.client_order_id,
            *values,
            account,
        )
    elif isinstance(item, op.CloseVanished):
        await conn.execute(
            "UPDATE monitoring.aged_positions SET status='closed', close_reason='manual', closed_at=$2 "
            "WHERE id=$1 AND status <> 'closed' AND ($3::text IS NULL OR account=$3)",
            item.aged_id,
            item.closed_at,
            account,
        )
    elif isinstance(item, op.ClosePosition):
        # The account stream may have reported the flat our close left before this row is
        # written: the detector then ended the episode as 'flat'. Our close did it.
        bot_id = await conn.fetchval(
            "UPDATE monitoring.episodes SET status='closed', quantity=0, "
            "closed_at=CASE WHEN status='open' THEN COALESCE($2, now()) ELSE closed_at END, "
            "end_reason='closed_by_service', updated_at=now() "
            "WHERE id=$1 AND (status='open' OR end_reason='flat') AND ($3::text IS NULL OR account=$3) "
            "RETURNING bot_position_id",
            item.position_id,
            item.closed_at,
            account,
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
