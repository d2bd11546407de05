"""An operator's word: hold, release, close now, a new per-symbol policy.

Each handler answers with one :class:`~actors.position.commands.Answer` (what came of
it, for the operator's record), records an event for the position's history
(``operator.hold``, ``operator.release``, ``policy.changed``; a close now is an
``aged.close.triggered`` like any) and changes only what the action is about:

* a hold stops every close but the emergency rule's until it ends (a timer wakes the
  actor then, so a price already good closes at once);
* a release ends it: from then on the position behaves as if it had never been held;
* a close now asks the executor for a reduce-only market close, through the same
  write-ahead path as any close, with close reason ``manual`` — unless a close is
  already in flight (``already closing``, nothing sent);
* a new policy recomputes the targets, and the status follows the phase it gives.
"""

from __future__ import annotations

from dataclasses import replace

from actors.policy import executable_price
from actors.position.close import maybe_close, schedule_target_check
from actors.position.commands import Answer, Emit, Persist, RequestClose, ScheduleTimer
from actors.position.events import ForceCloseRequested, HoldReleased, HoldSet, PolicyChanged
from actors.position.phases import assess_state, leave_error, sync_phase
from actors.position.state import PositionState
from actors.statuses import ACTIVE, Status

__all__ = ["on_hold", "on_release", "on_force_close", "on_policy"]

_FINISHED = (Status.CLOSED, Status.DUST)


def on_hold(s: PositionState, e: HoldSet, out: list) -> PositionState:
    if s.status in _FINISHED:
        out.append(Answer(f"not active ({s.status})"))
        return s
    s = replace(s, hold_until=e.until, hold_reason=e.reason)
    out.append(Emit("operator.hold", data={"until": e.until.isoformat(), "reason": e.reason}))
    if e.until > e.now:
        out.append(ScheduleTimer(e.until, "hold"))
    note = " (a close was already in flight)" if s.close_in_flight else ""
    out.append(Answer(f"held until {e.until.isoformat()}{note}"))
    return s


def on_release(s: PositionState, e: HoldReleased, out: list) -> PositionState:
    if s.status in _FINISHED:
        out.append(Answer(f"not active ({s.status})"))
        return s
    was_held = s.held(e.now)
    s = replace(s, hold_until=None, hold_reason=None)
    out.append(Emit("operator.release", data={"was_held": was_held}))
    out.append(Answer("released" if was_held else "released (was not held)"))
    return _judge_quote(s, e, out)


def on_force_close(s: PositionState, e: ForceCloseRequested, out: list) -> PositionState:
    if s.close_in_flight:
        out.append(Answer("already closing"))
        return s
    if s.status == Status.ERROR:
        s = leave_error(s, e.now, out)
    if s.status not in ACTIVE:
        out.append(Answer(f"not active ({s.status})"))
        return s
    if s.quantity <= 0:
        out.append(Answer("nothing left to close"))
        return s
    a = assess_state(s, e.now)
    out.append(Persist(close_triggered_at=e.now, target_price=a.target_price))
    out.append(
        Emit(
            "aged.close.triggered",
            target_price=a.target_price,
            data={"phase": a.phase.value, "manual": True, "reason": e.reason, "emergency": False},
        )
    )
    out.append(RequestClose(s.quantity, s.close_attempts + 1, emergency=True, worst_price=None))
    out.append(Answer("close sent"))
    return replace(s, close_in_flight=True, close_triggered_at=e.now, manual_close=True)


def on_policy(s: PositionState, e: PolicyChanged, out: list) -> PositionState:
    if s.status in _FINISHED:
        out.append(Answer(f"not active ({s.status})"))
        return s
    if e.config == s.config:
        out.append(Answer("unchanged"))
        return s
    s = replace(s, config=e.config)
    s, a = sync_phase(s, e.now, out)
    out.append(
        Persist(
            target_price=a.target_price,
            breakeven_price=a.breakeven_price,
            loss_tolerance_percent=a.loss_tolerance_percent,
        )
    )
    out.append(Emit("policy.changed", target_price=a.target_price, data={"policy": e.config.as_dict()}))
    target = "none" if a.target_price is None else format(a.target_price.normalize(), "f")
    out.append(Answer(f"policy applied (target {target})"))
    return _judge_quote(s, e, out)


def _judge_quote(s: PositionState, e: HoldReleased | PolicyChanged, out: list) -> PositionState:
    """Judge the quote the event carries, as a timer's: the price need not move to close."""
    price = executable_price(s.side, e.bid, e.ask, e.last)
    if price is None:
        return s
    a = assess_state(s, e.now)
    s = maybe_close(s, e.now, a, price, e.bid, e.ask, e.last, out)
    schedule_target_check(s, e.now, a, price, out)
    return s
