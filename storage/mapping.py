"""The one mapping between database rows and a position actor's state.

:func:`position_state` rebuilds a :class:`~actors.position.PositionState` from its
``monitoring.aged_positions`` row; :func:`aged_columns` turns the changes a
:class:`~actors.position.Persist` command carries into that row's columns. Nothing
else knows which column holds what.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.policy import PolicyConfig
from actors.position import PERSIST_FIELDS, Persist, PositionState, Settings
from actors.statuses import Status

# The column of ``monitoring.aged_positions`` each Persist field is written to.
AGED_COLUMN = {
    "status": "status",
    "grace_started_at": "grace_started_at",
    "progressive_started_at": "progressive_started_at",
    "hours_aged": "hours_aged",
    "hours_in_grace": "hours_in_grace",
    "hours_in_progressive": "hours_in_progressive",
    "target_price": "target_price",
    "breakeven_price": "breakeven_price",
    "loss_tolerance_percent": "current_loss_tolerance_percent",
    "sampled_price": "last_checked_price",
    "sampled_at": "last_price_check",
    "quantity": "quantity",
    "entry_price": "entry_price",
    "closed_qty": "closed_qty",
    "close_triggered_at": "close_triggered_at",
    "close_attempts": "close_attempts",
    "last_close_attempt_at": "last_close_attempt",
    "last_error": "last_error_message",
    "closed_at": "closed_at",
    "close_reason": "close_reason",
    "phase_at_close": "phase_at_close",
    "close_price": "close_price",
    "close_order_id": "close_order_id",
    "pnl": "actual_pnl",
    "pnl_percent": "actual_pnl_percent",
}
assert set(AGED_COLUMN) == set(PERSIST_FIELDS), "every Persist field needs its column"


def aged_columns(changes: Persist) -> dict[str, Any]:
    """The columns ``changes`` sets, with their values."""
    return {AGED_COLUMN[name]: value for name, value in changes.fields.items()}


def position_state(
    row: Mapping[str, Any], config: PolicyConfig, settings: Settings, *, inflight_orders: bool
) -> PositionState:
    """An actor's state from its aged row; ``inflight_orders``: a close order of it is not final.

    A close in flight (such an order, or a close triggered and not recorded closed)
    makes the actor reconcile with the exchange before it may send anything new.
    """
    status = Status(row["status"])
    return PositionState(
        aged_id=row["id"],
        position_id=row["position_id"],
        exchange=row["exchange"],
        symbol=row["symbol"],
        side=row["side"],
        entry_price=row["entry_price"],
        quantity=row["quantity"],
        opened_at=row["position_opened_at"],
        config=config,
        settings=settings,
        status=status,
        closed_qty=row["closed_qty"],
        close_attempts=row["close_attempts"],
        close_triggered_at=row["close_triggered_at"],
        last_sample_at=row["last_price_check"],
        last_price=row["last_checked_price"],
        needs_reconcile=inflight_orders or (row["close_triggered_at"] is not None and status != Status.CLOSED),
        hold_until=row.get("hold_until"),
        hold_reason=row.get("hold_reason"),
    )
