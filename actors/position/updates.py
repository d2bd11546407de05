"""Changes to the position on the exchange: a new size, a new entry, a trailing stop.

A change that arrives while a close is in flight waits (the close decides what is
left) and is applied with the close's result. A new entry price moves the breakeven
and every target at once; a trailing stop taking over parks the position in
``skipped`` until it lets go.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from actors.policy import breakeven_price
from actors.position.commands import Emit, Persist
from actors.position.events import PositionUpdate
from actors.position.phases import assess_state, sync_phase, transition
from actors.position.state import PHASE_STATUS, PositionState
from actors.statuses import ACTIVE, Status


def on_update(s: PositionState, e: PositionUpdate, out: list) -> PositionState:
    """A change on the exchange: applied now, or kept until the close in flight has its result."""
    if s.status == Status.CLOSED:
        return s
    if s.close_in_flight:
        # Not now: the close decides what is left. Kept, and applied once its result is in.
        pending = e if s.pending_update is None else s.pending_update.merged_with(e)
        return replace(s, pending_update=pending)
    return apply_update(s, e, out)


def apply_update(s: PositionState, e: PositionUpdate, out: list) -> PositionState:
    """Take on a new size or entry price (persisted and announced), and follow the
    trailing stop: ``skipped`` while it is active, back to the phase's status when not."""
    changes: dict[str, Any] = {}
    if e.quantity is not None and e.quantity > 0 and e.quantity != s.quantity:
        changes["quantity"] = e.quantity
    if e.entry_price is not None and e.entry_price > 0 and e.entry_price != s.entry_price:
        changes["entry_price"] = e.entry_price
    if changes:
        old_qty, old_entry = s.quantity, s.entry_price
        # A new entry means a new breakeven and new targets at once; the next tick is
        # sampled against them (no quiet band carries over from the old ones).
        s = replace(s, **changes, last_sample_distance=None)
        fields: dict[str, Any] = {"quantity": s.quantity}
        if "entry_price" in changes:
            a = assess_state(s, e.now)
            fields.update(
                entry_price=s.entry_price,
                target_price=a.target_price,
                breakeven_price=breakeven_price(s.side, s.entry_price, s.config),
                loss_tolerance_percent=a.loss_tolerance_percent,
            )
        out.append(Persist(**fields))
        out.append(
            Emit(
                "position.changed",
                target_price=fields.get("target_price"),
                data={
                    "old_quantity": str(old_qty),
                    "new_quantity": str(s.quantity),
                    "old_entry_price": str(old_entry),
                    "new_entry_price": str(s.entry_price),
                },
            )
        )
    if e.trailing_active is True and s.status in ACTIVE | {Status.ERROR}:
        s = transition(s, Status.SKIPPED, out)
        out.append(Emit("skipped", data={"reason": "trailing stop active"}))
    elif e.trailing_active is False and s.status == Status.SKIPPED:
        a = assess_state(s, e.now)
        s = transition(s, PHASE_STATUS[a.phase], out)
        out.append(Emit("resumed", data={"reason": "trailing stop no longer active"}))
        s, _ = sync_phase(s, e.now, out)
    return s
