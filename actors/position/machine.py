"""The state machine itself: :func:`step` hands each event to its handler.

Ticks and timers re-check the phase, sample the price now and then, and close when
the price allows (:mod:`~actors.position.close`); updates and a vanished position
follow the exchange (:mod:`~actors.position.updates`); an operator's word is
:mod:`~actors.position.operator`'s; a start picks up where a previous run left off.
"""

from __future__ import annotations

from dataclasses import replace

from actors.policy import CloseReason, executable_price
from actors.position.close import distance_percent, finish, maybe_close, on_close_result, schedule_target_check
from actors.position.commands import Answer, Command, Emit, Persist, RequestClose, ScheduleTimer, Stop
from actors.position.events import (
    CloseResult,
    Event,
    ForceCloseRequested,
    HoldReleased,
    HoldSet,
    PolicyChanged,
    PositionUpdate,
    PositionVanished,
    Start,
    Tick,
    Timer,
)
from actors.position.operator import on_force_close, on_hold, on_policy, on_release
from actors.position.phases import assess_state, emergency_due, hours_fields, leave_error, sync_phase
from actors.position.state import PHASE_STATUS, PositionState
from actors.position.updates import on_update
from actors.statuses import ACTIVE, Status


def _on_tick(s: PositionState, e: Tick, out: list) -> PositionState:
    """A price: catch up with a phase boundary, leave ``error`` after its cool-down,
    sample the distance to target now and then, and close once the price reaches it."""
    # The hot path: most ticks change nothing and return the same state object.
    if s.status not in ACTIVE and s.status != Status.ERROR:
        return s  # skipped: a trailing stop manages it
    a = assess_state(s, e.now)
    if s.status in ACTIVE and PHASE_STATUS[a.phase] != s.status:
        s, a = sync_phase(s, e.now, out)  # a phase boundary passed between timer and tick
    price = executable_price(s.side, e.bid, e.ask, e.last)
    if price is None:
        return s
    if s.status == Status.ERROR and s.error_until is not None and e.now >= s.error_until:
        s = leave_error(s, e.now, out)
        a = assess_state(s, e.now)
    if a.target_price is not None:
        distance = distance_percent(s.side, price, a.target_price)
        last = s.last_sample_distance
        due = last is None or s.last_sample_at is None or e.now - s.last_sample_at >= s.settings.sample_interval
        if due or (last is not None and abs(distance - last) >= s.settings.material_change_percent):
            out.append(
                Persist(
                    sampled_price=price,
                    sampled_at=e.now,
                    target_price=a.target_price,
                    loss_tolerance_percent=a.loss_tolerance_percent,
                    **hours_fields(s, a),
                )
            )
            out.append(Emit("price_check", market_price=price, target_price=a.target_price, distance_percent=distance))
            s = replace(s, last_sample_at=e.now, last_sample_distance=distance, last_price=price)
            s = maybe_close(s, e.now, a, price, e.bid, e.ask, e.last, out)
            schedule_target_check(s, e.now, a, price, out)
            return s
    return maybe_close(s, e.now, a, price, e.bid, e.ask, e.last, out)


def _on_timer(s: PositionState, e: Timer, out: list) -> PositionState:
    """A timer: leave ``error``, follow the phase, and judge the quote the timer carries
    against a target that moved (or, for an emergency close, the last sampled price)."""
    if s.status == Status.ERROR and s.error_until is not None and e.now >= s.error_until:
        s = leave_error(s, e.now, out)
    s, a = sync_phase(s, e.now, out)
    price = executable_price(s.side, e.bid, e.ask, e.last)
    if price is not None:
        # The target moved (a phase began, the allowance grew) while the price stood still.
        s = maybe_close(s, e.now, a, price, e.bid, e.ask, e.last, out)
        schedule_target_check(s, e.now, a, price, out)
        return s
    if s.last_price is not None and emergency_due(s, a):
        side_price = {"bid": s.last_price} if s.side == "long" else {"ask": s.last_price}
        return maybe_close(s, e.now, a, s.last_price, side_price.get("bid"), side_price.get("ask"), None, out)
    return s


def _on_vanished(s: PositionState, e: PositionVanished, out: list) -> PositionState:
    """The position is gone: closed by someone else (manual), unless our close is in flight."""
    if s.status == Status.CLOSED:
        return s
    if s.close_in_flight:
        # Our own close may have done it: its result tells. If that result leaves the
        # position open, the episode ended anyway (closed by someone else, re-entered or
        # flipped), and whatever is open now belongs to another episode.
        return replace(s, ended_during_close=True)
    return finish(
        s,
        e.now,
        CloseReason.MANUAL,
        out,
        fill_price=None,
        total_filled=s.closed_qty,
        order_id=None,
        attempts=s.close_attempts,
    )


def _on_start(s: PositionState, e: Start, out: list) -> PositionState:
    """The actor (re)starts: a finished position only stops; a close that may have been in
    flight is reconciled first; an ``error`` without a cool-down end gets a fresh one."""
    if s.status in (Status.CLOSED, Status.DUST):
        out.append(Stop())
        return s
    if s.needs_reconcile:
        out.append(RequestClose(s.quantity, s.close_attempts + 1, reconcile_only=True))
        s = replace(s, close_in_flight=True)
    if s.status == Status.ERROR and s.error_until is None:
        until = e.now + s.settings.error_cooldown
        s = replace(s, error_until=until)
        out.append(ScheduleTimer(until, "cooldown"))
    if s.held(e.now):
        out.append(ScheduleTimer(s.hold_until, "hold"))  # type: ignore[arg-type]  # held: not None
    s, _ = sync_phase(s, e.now, out)
    return s


def step(state: PositionState, event: Event) -> tuple[PositionState, list[Command]]:
    """Advance ``state`` by one event; return the new state and what to do."""
    out: list[Command] = []
    if state.status == Status.CLOSED and not isinstance(event, Start):
        if isinstance(event, (HoldSet, HoldReleased, ForceCloseRequested, PolicyChanged)):
            out.append(Answer("not active (closed)"))
        return state, out
    if isinstance(event, Tick):
        state = _on_tick(state, event, out)
    elif isinstance(event, Timer):
        state = _on_timer(state, event, out)
    elif isinstance(event, CloseResult):
        state = on_close_result(state, event, out)
    elif isinstance(event, PositionUpdate):
        state = on_update(state, event, out)
    elif isinstance(event, PositionVanished):
        state = _on_vanished(state, event, out)
    elif isinstance(event, Start):
        state = _on_start(state, event, out)
    elif isinstance(event, HoldSet):
        state = on_hold(state, event, out)
    elif isinstance(event, HoldReleased):
        state = on_release(state, event, out)
    elif isinstance(event, ForceCloseRequested):
        state = on_force_close(state, event, out)
    elif isinstance(event, PolicyChanged):
        state = on_policy(state, event, out)
    else:
        raise TypeError(f"unknown event {event!r}")
    return state, out
