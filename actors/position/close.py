"""Closing: when to ask for a close, and what its result means.

:func:`maybe_close` asks the executor for a close once the price reaches the target
and no operator's hold is in force (or an emergency close is due, hold or not);
:func:`schedule_target_check` wakes the actor when a target moving with time will
reach the last price. :func:`on_close_result` reads the
executor's answer: closed (:func:`finish`), dust left that no order can close
(:func:`end_as_dust`), failed (``error`` and a cool-down), or still open.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from actors.policy import Assessment, CloseReason, Phase, close_reason, realised_pnl, should_close
from actors.position.commands import Emit, Persist, RequestClose, ScheduleTimer, Stop
from actors.position.events import CloseResult
from actors.position.phases import assess_state, emergency_due, transition
from actors.position.state import PositionState
from actors.position.updates import apply_update
from actors.statuses import ACTIVE, Status


def distance_percent(side: str, price: Decimal, target: Decimal) -> Decimal:
    """How far the executable price still has to move to reach the target (≤ 0: reached)."""
    gap = (target - price) if side == "long" else (price - target)
    return gap / target * 100


def maybe_close(
    s: PositionState, now: datetime, a: Assessment, price: Decimal | None, bid, ask, last, out: list
) -> PositionState:
    if s.status not in ACTIVE or s.close_in_flight or s.quantity <= 0:
        return s
    emergency = emergency_due(s, a)
    if not emergency and (s.held(now) or not should_close(a, s.side, bid, ask, last)):
        return s
    if emergency and price is None and a.phase is Phase.NOT_AGED:
        return s
    out.append(
        Persist(
            close_triggered_at=now,
            target_price=a.target_price,
            loss_tolerance_percent=a.loss_tolerance_percent,
            sampled_price=price,
            sampled_at=now,
        )
    )
    out.append(
        Emit(
            "aged.close.triggered",
            market_price=price,
            target_price=a.target_price,
            data={
                "phase": a.phase.value,
                "loss_tolerance_percent": str(a.loss_tolerance_percent),
                "bid": None if bid is None else str(bid),
                "ask": None if ask is None else str(ask),
                "emergency": emergency,
            },
        )
    )
    out.append(
        RequestClose(
            s.quantity, s.close_attempts + 1, emergency=emergency, worst_price=None if emergency else a.target_price
        )
    )
    return replace(s, close_in_flight=True, close_triggered_at=now, last_price=price)


# How far ahead a target crossing is searched, and how finely (the timer fires no
# earlier than the crossing, at most this much later).
_CROSSING_HORIZON = timedelta(days=30)
_CROSSING_RESOLUTION = timedelta(milliseconds=1)


def crossing_time(s: PositionState, price: Decimal, now: datetime) -> datetime | None:
    """The first instant after ``now`` at which the target reaches ``price``, or None.

    Targets move monotonically with time (a long's falls, a short's rises), so the
    instant is found by bisection on the policy's own schedule.
    """

    def reached(at: datetime) -> bool:
        a = assess_state(s, at)
        if a.target_price is None:
            return False
        return price >= a.target_price if s.side == "long" else price <= a.target_price

    hi = now + _CROSSING_HORIZON
    if reached(now) or not reached(hi):
        return None
    lo = now
    while hi - lo > _CROSSING_RESOLUTION:
        mid = lo + (hi - lo) / 2
        if reached(mid):
            hi = mid
        else:
            lo = mid
    return hi


def schedule_target_check(s: PositionState, now: datetime, a: Assessment, price: Decimal, out: list) -> None:
    """In the progressive phase, wake again when the target will have reached ``price``
    — or after one sample interval, to look at a newer quote — whichever comes first."""
    if s.status not in ACTIVE or s.close_in_flight or a.phase is not Phase.PROGRESSIVE:
        return
    at = now + s.settings.sample_interval
    crossing = crossing_time(s, price, now)
    if crossing is not None:
        at = min(at, crossing)
    out.append(ScheduleTimer(at, "target"))


def finish(
    s: PositionState,
    now: datetime,
    reason: CloseReason,
    out: list,
    *,
    fill_price: Decimal | None,
    total_filled: Decimal,
    order_id: str | None,
    attempts: int,
) -> PositionState:
    fields: dict[str, Any] = {
        "closed_at": now,
        "close_reason": reason.value,
        "closed_qty": total_filled,
        "quantity": Decimal(0),
        "close_attempts": attempts,
    }
    if fill_price is not None and total_filled > 0:
        a = assess_state(s, s.close_triggered_at or now)
        pnl, pct = realised_pnl(s.side, s.entry_price, fill_price, total_filled, s.config)
        fields.update(
            close_price=fill_price,
            pnl=pnl,
            pnl_percent=pct,
            close_order_id=order_id,
            phase_at_close=a.phase.value if a.phase is not Phase.NOT_AGED else None,
        )
    s = transition(s, Status.CLOSED, out, **fields)
    out.append(
        Emit(
            "aged.close.completed",
            market_price=fill_price,
            success=True,
            data={
                "close_reason": reason.value,
                "filled_qty": str(total_filled),
                "attempts": attempts,
                "pnl_percent": str(fields.get("pnl_percent")),
            },
        )
    )
    out.append(Stop())
    return replace(
        s,
        close_in_flight=False,
        needs_reconcile=False,
        closed_qty=total_filled,
        quantity=Decimal(0),
        close_attempts=attempts,
        pending_update=None,
    )


def on_close_result(s: PositionState, e: CloseResult, out: list) -> PositionState:
    """Read the executor's answer to our close.

    Fills are cumulative, so a result read twice counts once. Flat with a fill of ours:
    closed by policy (the reason judged at the trigger). Dust: stop. Gone, or the episode
    ended meanwhile: closed as manual. Otherwise the rest stays open: after a failure in
    ``error`` for a cool-down. An update that waited for the result is applied last.
    """
    attempts = max(s.close_attempts, e.attempts)
    original = s.closed_qty + s.quantity
    total = min(max(s.closed_qty, e.filled_qty), original)
    if e.outcome == "flat" and total > 0 and e.avg_price is not None:
        a = assess_state(s, s.close_triggered_at or e.now)
        reason = (
            CloseReason.MANUAL
            if s.manual_close
            else close_reason(s.side, s.entry_price, e.avg_price, a, s.config, emergency=emergency_due(s, a))
        )
        return finish(
            s,
            e.now,
            reason,
            out,
            fill_price=e.avg_price,
            total_filled=total,
            order_id=e.last_order_id,
            attempts=attempts,
        )
    if e.outcome == "dust" and s.status != Status.DUST:
        return end_as_dust(s, e, attempts, total, out)
    if e.outcome in ("flat", "vanished") or s.ended_during_close:
        return finish(
            s,
            e.now,
            CloseReason.MANUAL,
            out,
            fill_price=e.avg_price if total > 0 else None,
            total_filled=total,
            order_id=e.last_order_id,
            attempts=attempts,
        )
    remaining = original - total
    if e.remaining_qty is not None:
        remaining = min(e.remaining_qty, remaining)
    pending = s.pending_update
    if pending is not None and e.remaining_qty is not None:
        pending = replace(pending, quantity=None)  # the exchange's size after the close is the fresher one
    s = replace(
        s,
        close_in_flight=False,
        needs_reconcile=False,
        manual_close=False,
        quantity=max(Decimal(0), remaining),
        closed_qty=total,
        close_attempts=attempts,
        pending_update=None,
    )
    fields: dict[str, Any] = {"close_attempts": attempts, "quantity": s.quantity, "closed_qty": s.closed_qty}
    if e.outcome == "failed" and s.status == Status.SKIPPED:
        # The bot's trailing stop took the position over while our close was out (or
        # before a restart reconciled it): it stays the stop's; the failure is recorded.
        out.append(Persist(last_error=e.error, last_close_attempt_at=e.now, **fields))
        out.append(Emit("aged.close.failed", success=False, error=e.error, critical=True, data={"attempts": attempts}))
        return s if pending is None else apply_update(s, pending, out)
    if e.outcome == "failed":
        until = e.now + s.settings.error_cooldown
        if s.status != Status.ERROR:
            s = transition(s, Status.ERROR, out, last_error=e.error, last_close_attempt_at=e.now, **fields)
        else:
            out.append(Persist(last_error=e.error, last_close_attempt_at=e.now, **fields))
        out.append(
            Emit(
                "aged.close.failed",
                success=False,
                error=e.error,
                critical=True,
                data={"attempts": attempts, "retry_after": until.isoformat()},
            )
        )
        out.append(ScheduleTimer(until, "cooldown"))
        s = replace(s, error_until=until)
        return s if pending is None else apply_update(s, pending, out)
    out.append(Persist(**fields))
    return s if pending is None else apply_update(s, pending, out)


def end_as_dust(s: PositionState, e: CloseResult, attempts: int, total: Decimal, out: list) -> PositionState:
    """What is left is below the minimum order quantity: no order can close it."""
    left = e.remaining_qty if e.remaining_qty is not None else s.closed_qty + s.quantity - total
    s = replace(
        s, close_in_flight=False, needs_reconcile=False, quantity=left, closed_qty=total, close_attempts=attempts
    )
    s = transition(
        s,
        Status.DUST,
        out,
        quantity=left,
        closed_qty=total,
        close_attempts=attempts,
        last_error=e.error,
        last_close_attempt_at=e.now,
    )
    out.append(
        Emit(
            "aged.close.dust",
            success=False,
            error=e.error,
            critical=True,
            data={"remaining_qty": str(left), "filled_qty": str(total), "attempts": attempts},
        )
    )
    out.append(Stop())
    return s
