"""The one mapping between database rows and a position actor's state.

:func:`position_state` rebuilds a :class:`~actors.position.PositionState` from its
``monitoring.aged_positions`` row; :func:`aged_columns` turns the changes a
:class:`~actors.position.Persist` command carries into that row's columns. Nothing
else knows which column holds what.
"""

from __future__ import annotations

from typing import Any, Mapping

from actors.policy import PolicyConfig
from actors.position import PositionState, Settings
from actors.statuses import Status


def position_state(row: Mapping[str, Any], config: PolicyConfig, settings: Settings, *,
                   inflight_orders: bool) -> PositionState:
    """An actor's state from its aged row; ``inflight_orders``: a close order of it is not final.

    A close in flight (such an order, or a close triggered and not recorded closed)
    makes the actor reconcile with the exchange before it may send anything new.
    """
    status = Status(row["status"])
    return PositionState(
        aged_id=row["id"], position_id=row["position_id"], exchange=row["exchange"], symbol=row["symbol"],
        side=row["side"], entry_price=row["entry_price"], quantity=row["quantity"],
        opened_at=row["position_opened_at"], config=config, settings=settings, status=status,
        closed_qty=row["closed_qty"], close_attempts=row["close_attempts"],
        close_triggered_at=row["close_triggered_at"], last_sample_at=row["last_price_check"],
        last_price=row["last_checked_price"],
        needs_reconcile=inflight_orders or (row["close_triggered_at"] is not None and status != Status.CLOSED),
    )
