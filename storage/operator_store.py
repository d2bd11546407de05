"""Operator actions and per-symbol overrides: stored with who, when and why.

An operator action (:mod:`actors.operator`) is stored once, in
``monitoring.operator_actions``, by whoever takes it (the CLI, the HTTP API, the
configuration) and picked up by the running service (``service.operator_inbox``),
which marks it applied with what came of it. The row's insert trigger notifies
channel ``aged_operator``, so a listening service hears it at once.

What must hold even while no service runs is written in the same transaction as the
action's row: a hold sets ``aged_positions.hold_until``/``hold_reason`` (a release
clears them), an override replaces the symbol's row in ``monitoring.symbol_overrides``
(a clear removes it). A service starting later loads both.

Each check against the database happens before anything is written; a failed check
is one :class:`~actors.operator.BadAction` and the transaction writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID

import trio_asyncio

from actors.operator import (
    BadAction,
    ClearOverride,
    ForceClose,
    Hold,
    OperatorAction,
    Override,
    Release,
    check_action,
    validate_override,
)
from actors.policy import PolicyConfig
from actors.statuses import Status
from storage.errors import StorageUnavailable
from storage.store_base import StoreBase

__all__ = ["OperatorStore", "NOT_CLOSABLE"]

# An aged position in these statuses cannot be held or closed by an operator.
NOT_CLOSABLE = frozenset({Status.CLOSED, Status.DUST})


class OperatorStore(StoreBase):
    """Recording operator actions, reading them back, and the per-symbol overrides."""

    async def record_action(self, action: OperatorAction, actor: str, *, base: PolicyConfig | None = None) -> dict:
        """Store ``action`` taken by ``actor`` (``'cli:<user>'``, ``'api'``, ``'config'``); the stored row.

        Raises :class:`~actors.operator.BadAction` (nothing stored) when a field is
        malformed, the aged position does not exist (``no aged position <id>``), it
        is closed (or dust) and the action is a hold, release or close, an override's
        settings are not allowed (checked against ``base``, the configured policy;
        the defaults when None), or a clear finds no override.
        """
        check_action(action)
        if not isinstance(actor, str) or not actor.strip():
            raise BadAction(f"actor: who took the action is required, got {actor!r}")
        settings: dict[str, Decimal] = {}
        if isinstance(action, Override):
            settings = validate_override(action.settings, base or PolicyConfig())

        async def job(conn) -> dict | BadAction:
            async with conn.transaction():
                if isinstance(action, (Hold, Release, ForceClose)):
                    return await _position_action(conn, action, actor)
                return await _symbol_action(conn, action, actor, settings)

        result = await self._call(job)
        if isinstance(result, BadAction):
            raise result
        return result

    async def pending_actions(self, limit: int = 100, *, overrides_after: int | None = None) -> list[dict]:
        """Actions for a service to apply, oldest first.

        Unscoped (one service for every account): every action not yet applied. Scoped to
        an account (:meth:`~storage.repository.Database.for_account`): the actions on its
        own aged positions not yet applied, and, when ``overrides_after`` is given, every
        symbol override recorded after that action id whether or not another account's
        service applied it already (an override concerns every account of its exchange).
        """
        if self.account is None:
            return await self.fetch(
                "SELECT * FROM monitoring.operator_actions WHERE applied_at IS NULL ORDER BY id LIMIT $1", limit
            )
        return await self.fetch(
            "SELECT o.* FROM monitoring.operator_actions o "
            "LEFT JOIN monitoring.aged_positions a ON a.id = o.aged_position_id "
            "WHERE (o.aged_position_id IS NOT NULL AND o.applied_at IS NULL AND a.account = $2) "
            "   OR (o.aged_position_id IS NULL AND o.id > $3) "
            "ORDER BY o.id LIMIT $1",
            limit,
            self.account,
            overrides_after if overrides_after is not None else 2**62,
        )

    async def last_override_action(self) -> int:
        """The id of the newest symbol-override action (0 when none)."""
        return await self.fetchval(
            "SELECT COALESCE(max(id), 0) FROM monitoring.operator_actions WHERE aged_position_id IS NULL"
        )

    async def mark_applied(self, action_id: int, outcome: str, error: str | None = None) -> None:
        """Record what came of action ``action_id``. An action already applied keeps its first outcome."""
        await self.execute(
            "UPDATE monitoring.operator_actions SET applied_at = now(), outcome = $2, error = $3 "
            "WHERE id = $1 AND applied_at IS NULL",
            action_id,
            outcome,
            error,
        )

    async def actions(self, aged_id: UUID | None = None, limit: int = 100) -> list[dict]:
        """The history of operator actions (of one aged position when ``aged_id`` is given), newest first."""
        if aged_id is None:
            return await self.fetch("SELECT * FROM monitoring.operator_actions ORDER BY id DESC LIMIT $1", limit)
        return await self.fetch(
            "SELECT * FROM monitoring.operator_actions WHERE aged_position_id = $1 ORDER BY id DESC LIMIT $2",
            aged_id,
            limit,
        )

    async def symbol_overrides(self) -> dict[tuple[str, str], dict]:
        """The operators' per-symbol policy settings: ``{(exchange, symbol): {key: Decimal}}``."""
        rows = await self.fetch("SELECT exchange, symbol, settings FROM monitoring.symbol_overrides")
        return {(r["exchange"], r["symbol"]): {k: Decimal(str(v)) for k, v in r["settings"].items()} for r in rows}

    async def listen(self, channel: str, on_notify: Callable[[str], None], on_ready: Callable[[], None]) -> None:
        """LISTEN on ``channel`` until cancelled: ``on_notify(payload)`` for each notification.

        Holds one pooled connection for as long as it runs; ``on_ready()`` once the
        LISTEN is in place (anything sent before then must be read from the table). A
        lost connection ends it with :class:`~storage.errors.StorageUnavailable`.

        It does not go through :meth:`_call`: it never finishes on its own, and a
        call in flight is what test doubles of the database count as busy.
        """

        def notified(_conn, _pid, _channel, payload) -> None:
            on_notify(payload)

        lost: asyncio.Future[None] | None = None

        def terminated(_conn) -> None:
            if lost is not None and not lost.done():
                lost.set_result(None)

        async def job() -> None:
            nonlocal lost
            lost = asyncio.get_running_loop().create_future()
            async with self._pool.acquire() as conn:
                conn.add_termination_listener(terminated)
                await conn.add_listener(channel, notified)
                try:
                    on_ready()
                    await lost
                finally:
                    conn.remove_termination_listener(terminated)
                    if not conn.is_closed():
                        await conn.remove_listener(channel, notified)  # UNLISTEN before the pool reuses it
            raise StorageUnavailable(f"the connection listening on {channel} was lost")

        try:
            await trio_asyncio.aio_as_trio(job)()
        except StorageUnavailable:
            raise
        except Exception as exc:
            raise StorageUnavailable(f"listening on {channel}: {type(exc).__name__}: {exc}") from exc

    async def override_rows(self) -> list[dict]:
        """Every row of ``monitoring.symbol_overrides`` (settings, reason, actor, updated_at)."""
        rows = await self.fetch("SELECT * FROM monitoring.symbol_overrides ORDER BY exchange, symbol")
        for r in rows:
            r["settings"] = {k: Decimal(str(v)) for k, v in r["settings"].items()}
        return rows


async def _insert(conn, *, aged_id, exchange, symbol, action: str, params: dict, reason, actor: str) -> dict:
    row = await conn.fetchrow(
        "INSERT INTO monitoring.operator_actions (aged_position_id, exchange, symbol, action, params, reason, actor) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
        aged_id,
        exchange,
        symbol,
        action,
        params,
        reason,
        actor,
    )
    return dict(row)


async def _position_action(conn, action: Hold | Release | ForceClose, actor: str) -> dict | BadAction:
    aged = await conn.fetchrow(
        "SELECT id, exchange, symbol, status FROM monitoring.aged_positions WHERE id = $1 FOR UPDATE", action.aged_id
    )
    if aged is None:
        return BadAction(f"no aged position {action.aged_id}")
    if aged["status"] in NOT_CLOSABLE:
        return BadAction(f"aged position {action.aged_id} is {aged['status']}: nothing to {action.name}")
    params: dict[str, Any] = {}
    if isinstance(action, Hold):
        params = {"until": action.until.isoformat()}
        await conn.execute(
            "UPDATE monitoring.aged_positions SET hold_until = $2, hold_reason = $3 WHERE id = $1",
            action.aged_id,
            action.until,
            action.reason,
        )
    elif isinstance(action, Release):
        await conn.execute(
            "UPDATE monitoring.aged_positions SET hold_until = NULL, hold_reason = NULL WHERE id = $1", action.aged_id
        )
    return await _insert(
        conn,
        aged_id=action.aged_id,
        exchange=aged["exchange"],
        symbol=aged["symbol"],
        action=action.name,
        params=params,
        reason=action.reason,
        actor=actor,
    )


async def _symbol_action(
    conn, action: Override | ClearOverride, actor: str, settings: dict[str, Decimal]
) -> dict | BadAction:
    stored = {k: str(v) for k, v in settings.items()}
    if isinstance(action, Override):
        await conn.execute(
            "INSERT INTO monitoring.symbol_overrides (exchange, symbol, settings, reason, actor, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (exchange, symbol) DO UPDATE SET "
            "settings = EXCLUDED.settings, reason = EXCLUDED.reason, actor = EXCLUDED.actor, updated_at = now()",
            action.exchange,
            action.symbol,
            stored,
            action.reason,
            actor,
        )
    else:
        gone = await conn.fetchval(
            "DELETE FROM monitoring.symbol_overrides WHERE exchange = $1 AND symbol = $2 RETURNING settings",
            action.exchange,
            action.symbol,
        )
        if gone is None:
            return BadAction(f"no override of {action.symbol} on {action.exchange} to clear")
    return await _insert(
        conn,
        aged_id=None,
        exchange=action.exchange,
        symbol=action.symbol,
        action=action.name,
        params={"settings": stored} if isinstance(action, Override) else {},
        reason=action.reason,
        actor=actor,
    )
