"""The per-position logic, as a pure state machine.

``step(state, event) -> (state, commands)`` is all there is: no trio, no database, no
clock. The actor around it (:mod:`actors.position_actor`) feeds it events — ticks,
timers, close results, position updates — and carries its commands out: persist a
change, ask the executor to close, emit an event, set a timer.

Statuses move only along these edges::

    detected ──► grace_active ──► progressive_active ──► closed
        │              │   ▲              │   ▲
        └──────────────┼───┼──────────────┘   │        (any active status may go to
                       ▼   │                  │         error and back after a cool-down,
                     error / skipped ─────────┘         or to skipped and back while a
                                                        trailing stop is active)

``closed`` is final. At most one close is in flight at a time, and a close never asks
for more than the remaining quantity. ``dust`` (from any active status or ``error``) is
where a close ends when what is left is below the exchange's minimum order quantity:
no order can close it, so the actor stops (one alert) and the detector records the
close once the position is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Union
from uuid import UUID

from actors.policy import (
    Assessment, CloseReason, Phase, PolicyConfig, Schedule, aged_at, breakeven_price, close_reason, executable_price,
    executable_price_for, next_phase_change, realised_pnl, should_close,
)
from actors.statuses import ACTIVE, STATUS_OF_PHASE, Status

PHASE_STATUS = STATUS_OF_PHASE
LEGAL = {
    Status.DETECTED: {Status.GRACE_ACTIVE, Status.PROGRESSIVE_ACTIVE, Status.CLOSED, Status.ERROR, Status.SKIPPED,
                      Status.DUST},
    Status.GRACE_ACTIVE: {Status.PROGRESSIVE_ACTIVE, Status.CLOSED, Status.ERROR, Status.SKIPPED, Status.DUST},
    Status.PROGRESSIVE_ACTIVE: {Status.CLOSED, Status.ERROR, Status.SKIPPED, Status.DUST},
    Status.ERROR: {Status.GRACE_ACTIVE, Status.PROGRESSIVE_ACTIVE, Status.CLOSED, Status.SKIPPED, Status.DETECTED,
                   Status.DUST},
    Status.SKIPPED: {Status.DETECTED, Status.GRACE_ACTIVE, Status.PROGRESSIVE_ACTIVE, Status.CLOSED},
    Status.DUST: {Status.CLOSED},
    Status.CLOSED: set(),
}


@dataclass(frozen=True)
class Settings:
    """How the actor behaves around the policy.

    ``sample_interval`` — at most one routine price-check row per this many seconds…
    ``material_change_percent`` — …unless the distance to target moved at least this
    many percentage points since the last sample.
    ``error_cooldown`` — after a close failed on every attempt, wait this long before
    trying again (the position stays under watch).
    ``emergency_close_after_hours`` — force a close at any price once a position is
    this old. ``None`` (the default) turns it off.
    """

    sample_interval: timedelta = timedelta(seconds=60)
    material_change_percent: Decimal = Decimal("0.5")
    error_cooldown: timedelta = timedelta(seconds=300)
    emergency_close_after_hours: Decimal | None = None


@dataclass(frozen=True)
class PositionState:
    aged_id: UUID
    position_id: int
    exchange: str
    symbol: str
    side: str
    entry_price: Decimal
    quantity: Decimal  # remaining open quantity
    opened_at: datetime
    config: PolicyConfig
    settings: Settings = field(default_factory=Settings)
    status: Status = Status.DETECTED
    closed_qty: Decimal = Decimal(0)
    close_in_flight: bool = False
    close_attempts: int = 0
    close_triggered_at: datetime | None = None
    error_until: datetime | None = None
    last_sample_at: datetime | None = None
    last_sample_distance: Decimal | None = None
    last_price: Decimal | None = None  # the last sampled executable price
    needs_reconcile: bool = False  # a close may have been in flight when we (re)started
    pending_update: "PositionUpdate | None" = None  # arrived while a close was in flight; applied after it
    ended_during_close: bool = False  # the episode ended while our close was in flight
    schedule: Schedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", Schedule.of(self.side, self.entry_price, self.opened_at, self.config))


# --- events -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Start:
    now: datetime


@dataclass(frozen=True, slots=True)
class Tick:
    now: datetime
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Timer:
    """A timer the actor set is due. ``bid``/``ask``/``last``: the newest quote, when the
    actor has a recent one (a timer re-evaluates it against a target that moved)."""

    now: datetime
    kind: str = "phase"
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CloseResult:
    """What the executor did with a close request.

    ``outcome``: ``"flat"`` (the exchange reports no position left), ``"vanished"``
    (the position was already gone before any fill of ours), ``"open"`` (nothing
    changed: e.g. a reconcile found no order), ``"failed"`` (every attempt failed).
    ``filled_qty``/``avg_price`` are *cumulative* over every close order ever sent for
    this aged position (volume-weighted price), so a result read back after a restart
    never double-counts. ``remaining_qty`` is what the exchange still shows;
    ``attempts`` is the highest attempt number used so far.
    """

    now: datetime
    outcome: str
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    remaining_qty: Decimal | None = None
    attempts: int = 0
    last_order_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    """The exchange (or the trading bot's book) shows the episode changed: a new size
    (averaging in, a partial reduction by someone else), a new average entry, or the
    trailing stop switched. ``None`` fields are unchanged."""

    now: datetime
    quantity: Decimal | None = None
    trailing_active: bool | None = None
    entry_price: Decimal | None = None

    def merged_with(self, later: "PositionUpdate") -> "PositionUpdate":
        return PositionUpdate(
            later.now,
            quantity=later.quantity if later.quantity is not None else self.quantity,
            trailing_active=later.trailing_active if later.trailing_active is not None else self.trailing_active,
            entry_price=later.entry_price if later.entry_price is not None else self.entry_price)


@dataclass(frozen=True, slots=True)
class PositionVanished:
    now: datetime


Event = Union[Start, Tick, Timer, CloseResult, PositionUpdate, PositionVanished]


# --- commands -----------------------------------------------------------------------------

class _Keep:
    """The value of a :class:`Persist` field that does not change."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Record changes to the aged position: only the fields given (not :data:`KEEP`) change.

    The names are the machine's; storage maps them to its columns
    (:func:`storage.mapping.aged_columns`).
    """

    status: Status = KEEP
    grace_started_at: datetime = KEEP  # policy instants, from the open time
    progressive_started_at: datetime = KEEP
    hours_aged: Decimal = KEEP
    hours_in_grace: Decimal = KEEP
    hours_in_progressive: Decimal = KEEP
    target_price: Decimal | None = KEEP  # None: no target (not aged)
    breakeven_price: Decimal = KEEP
    loss_tolerance_percent: Decimal = KEEP
    sampled_price: Decimal | None = KEEP  # the last sampled executable price
    sampled_at: datetime = KEEP
    quantity: Decimal = KEEP  # still open
    entry_price: Decimal = KEEP
    closed_qty: Decimal = KEEP
    close_triggered_at: datetime = KEEP
    close_attempts: int = KEEP
    last_close_attempt_at: datetime = KEEP
    last_error: str | None = KEEP  # None clears it
    closed_at: datetime = KEEP
    close_reason: str = KEEP  # a CloseReason value
    phase_at_close: str | None = KEEP  # a Phase value; None: closed before the policy applied
    close_price: Decimal = KEEP
    close_order_id: str | None = KEEP
    pnl: Decimal = KEEP
    pnl_percent: Decimal = KEEP

    @property
    def fields(self) -> dict[str, Any]:
        """The fields given, by name."""
        return {name: value for name in PERSIST_FIELDS if (value := getattr(self, name)) is not KEEP}


PERSIST_FIELDS = tuple(Persist.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class RequestClose:
    qty: Decimal
    next_attempt: int
    reconcile_only: bool = False
    emergency: bool = False
    worst_price: Decimal | None = None  # the worst price the policy accepts (None: any, an emergency)


@dataclass(frozen=True, slots=True)
class Emit:
    event_type: str
    market_price: Decimal | None = None
    target_price: Decimal | None = None
    distance_percent: Decimal | None = None
    success: bool | None = None
    error: str | None = None
    data: dict[str, Any] | None = None
    critical: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleTimer:
    at: datetime
    kind: str = "phase"


@dataclass(frozen=True, slots=True)
class Stop:
    """The aged position is finished (closed); the actor may exit."""


Command = Union[Persist, RequestClose, Emit, ScheduleTimer, Stop]


# --- the machine --------------------------------------------------------------------------

def _assess(s: PositionState, now: datetime) -> Assessment:
    return s.schedule.assess(now)


def _hours_fields(s: PositionState, a: Assessment) -> dict[str, Any]:
    over = max(Decimal(0), a.hours_over)
    grace = min(over, s.config.grace_period_hours)
    return {"hours_aged": a.age_hours, "hours_in_grace": grace,
            "hours_in_progressive": max(Decimal(0), over - s.config.grace_period_hours)}


def _transition(s: PositionState, new_status: str, out: list, **fields) -> PositionState:
    if new_status == s.status:
        if fields:
            out.append(Persist(**fields))
        return s
    if new_status not in LEGAL[s.status]:
        raise AssertionError(f"illegal status change {s.status} -> {new_status}")
    out.append(Persist(status=new_status, **fields))
    return replace(s, status=new_status)


def _phase_boundaries(s: PositionState) -> tuple[datetime, datetime]:
    start = aged_at(s.opened_at, s.config)
    return start, start + timedelta(microseconds=int(s.config.grace_period_hours * 3_600_000_000))


def _sync_phase(s: PositionState, now: datetime, out: list) -> tuple[PositionState, Assessment]:
    """Move the status to the phase the clock says, and keep the phase timer set."""
    a = _assess(s, now)
    if s.status in ACTIVE:
        wanted = PHASE_STATUS[a.phase]
        if wanted != s.status:
            grace_start, grace_end = _phase_boundaries(s)
            fields: dict[str, Any] = {"target_price": a.target_price,
                                      "loss_tolerance_percent": a.loss_tolerance_percent,
                                      **_hours_fields(s, a)}
            if a.phase is not Phase.NOT_AGED:
                fields["grace_started_at"] = grace_start
            if a.phase is Phase.PROGRESSIVE:
                fields["progressive_started_at"] = grace_end
            old = s.status
            s = _transition(s, wanted, out, **fields)
            out.append(Emit("aged.phase.changed", target_price=a.target_price,
                            data={"from": old, "to": wanted, "phase": a.phase.value,
                                  "loss_tolerance_percent": str(a.loss_tolerance_percent)}))
    nxt = next_phase_change(s.opened_at, now, s.config)
    if nxt is not None:
        out.append(ScheduleTimer(nxt + timedelta(microseconds=1), "phase"))
    return s, a


def _emergency_due(s: PositionState, a: Assessment) -> bool:
    limit = s.settings.emergency_close_after_hours
    return limit is not None and a.age_hours >= limit


def _distance_percent(side: str, price: Decimal, target: Decimal) -> Decimal:
    """How far the executable price still has to move to reach the target (≤ 0: reached)."""
    gap = (target - price) if side == "long" else (price - target)
    return gap / target * 100


def _maybe_close(s: PositionState, now: datetime, a: Assessment, price: Decimal | None,
                 bid, ask, last, out: list) -> PositionState:
    if s.status not in ACTIVE or s.close_in_flight or s.quantity <= 0:
        return s
    emergency = _emergency_due(s, a)
    if not emergency and not should_close(a, s.side, bid, ask, last):
        return s
    if emergency and price is None and a.phase is Phase.NOT_AGED:
        return s
    out.append(Persist(close_triggered_at=now, target_price=a.target_price,
                       loss_tolerance_percent=a.loss_tolerance_percent, sampled_price=price, sampled_at=now))
    out.append(Emit("aged.close.triggered", market_price=price, target_price=a.target_price,
                    data={"phase": a.phase.value, "loss_tolerance_percent": str(a.loss_tolerance_percent),
                          "bid": None if bid is None else str(bid), "ask": None if ask is None else str(ask),
                          "emergency": emergency}))
    out.append(RequestClose(s.quantity, s.close_attempts + 1, emergency=emergency,
                            worst_price=None if emergency else a.target_price))
    return replace(s, close_in_flight=True, close_triggered_at=now, last_price=price)


def _on_tick(s: PositionState, e: Tick, out: list) -> PositionState:
    # The hot path: most ticks change nothing and return the same state object.
    if s.status not in ACTIVE and s.status != Status.ERROR:
        return s  # skipped: a trailing stop manages it
    a = _assess(s, e.now)
    if s.status in ACTIVE and PHASE_STATUS[a.phase] != s.status:
        s, a = _sync_phase(s, e.now, out)  # a phase boundary passed between timer and tick
    price = executable_price(s.side, e.bid, e.ask, e.last)
    if price is None:
        return s
    if s.status == Status.ERROR and s.error_until is not None and e.now >= s.error_until:
        s = _leave_error(s, e.now, out)
        a = _assess(s, e.now)
    if a.target_price is not None:
        distance = _distance_percent(s.side, price, a.target_price)
        due = (s.last_sample_distance is None or s.last_sample_at is None
               or e.now - s.last_sample_at >= s.settings.sample_interval)
        if due or abs(distance - s.last_sample_distance) >= s.settings.material_change_percent:
            out.append(Persist(sampled_price=price, sampled_at=e.now, target_price=a.target_price,
                               loss_tolerance_percent=a.loss_tolerance_percent, **_hours_fields(s, a)))
            out.append(Emit("price_check", market_price=price, target_price=a.target_price,
                            distance_percent=distance))
            s = replace(s, last_sample_at=e.now, last_sample_distance=distance, last_price=price)
            s = _maybe_close(s, e.now, a, price, e.bid, e.ask, e.last, out)
            _schedule_target_check(s, e.now, a, price, out)
            return s
    return _maybe_close(s, e.now, a, price, e.bid, e.ask, e.last, out)


# --- quiet bands ---------------------------------------------------------------------------

# Bounds are pulled in by this much (relative) so that rounding in step()'s own
# arithmetic can never put a tick the band calls quiet on the other side of a threshold.
_BAND_MARGIN = Decimal("1e-9")


@dataclass(frozen=True, slots=True)
class QuietBand:
    """Ticks that cannot change a position's state: for them ``step`` is a no-op.

    A tick is *quiet* when it arrives before ``until`` and its executable price (bid for
    a long, ask for a short, else the last price) is strictly between ``low`` and
    ``high`` (``None``: unbounded) — or when it has no executable price at all. The
    actor publishes its band after every event it handles, so its mailbox can drop
    quiet ticks without waking it; any other tick wakes it as before.
    """

    long: bool
    low: Decimal | None
    high: Decimal | None
    until: datetime

    def quiet_price(self, bid: Decimal | None, ask: Decimal | None, last: Decimal | None) -> bool:
        """True if a tick with these prices is quiet (time aside)."""
        price = executable_price_for(self.long, bid, ask, last)
        if price is None:
            return True  # no executable price: step only checks the phase, which holds until `until`
        low, high = self.low, self.high
        return (low is None or price > low) and (high is None or price < high)


def quiet_band(s: PositionState, now: datetime) -> QuietBand | None:
    """The band of ticks that leave ``s`` unchanged from ``now`` until the band's ``until``.

    ``None`` when the next tick may matter whatever its price (a sample is due, a phase
    change or the end of a cool-down is pending, an emergency close is due ...).
    What ``step`` does with a tick, and so what the band must exclude:

    * a phase boundary passing (the band ends at the next one);
    * leaving ``error`` once the cool-down is over (the band ends there);
    * a price-check sample: due ``sample_interval`` after the last one (the band ends
      there), or when the distance to target moved by ``material_change_percent``;
    * a close: the executable price reaching the target;
    * an emergency close once the position is old enough (the band ends there).

    Targets move with time (monotonically: a long's only falls, a short's only rises),
    so the price bounds hold for every target between ``now`` and ``until``.
    """
    long = s.side == "long"
    horizon = now + s.settings.sample_interval
    if s.status not in ACTIVE and s.status != Status.ERROR:
        return QuietBand(long, None, None, horizon)  # step ignores ticks in these statuses
    a = _assess(s, now)
    if s.status in ACTIVE and PHASE_STATUS[a.phase] != s.status:
        return None
    until = horizon
    nxt = next_phase_change(s.opened_at, now, s.config)
    if nxt is not None:
        until = min(until, nxt)
    if s.status == Status.ERROR and s.error_until is not None:
        if now >= s.error_until:
            return None
        until = min(until, s.error_until)
    limit = s.settings.emergency_close_after_hours
    if limit is not None:
        if _emergency_due(s, a):
            return None
        until = min(until, s.opened_at + timedelta(microseconds=int(limit * 3_600_000_000)))
    if a.target_price is not None:
        if s.last_sample_at is None or s.last_sample_distance is None:
            return None
        until = min(until, s.last_sample_at + s.settings.sample_interval)
    if until <= now:
        return None
    if a.target_price is None:
        return QuietBand(long, None, None, until)  # not aged: no sample, no close
    end = _assess(s, until)
    if end.phase is not a.phase or end.target_price is None:
        return None
    t_min, t_max = min(a.target_price, end.target_price), max(a.target_price, end.target_price)
    last, material = s.last_sample_distance, s.settings.material_change_percent
    if long:
        # distance = (target - price) / target * 100: sampled once it leaves last ± material;
        # a close once price >= target
        upper = 1 - (last - material) / 100
        if upper <= 0:
            return None
        high = min(t_min, t_min * upper)
        lower = 1 - (last + material) / 100
        low = t_max * lower if lower > 0 else None
    else:
        # distance = (price - target) / target * 100; a close once price <= target
        upper = 1 + (last + material) / 100
        if upper <= 0:
            return None
        high = t_min * upper
        lower = 1 + (last - material) / 100
        low = max(t_max, t_max * lower) if lower > 0 else t_max
    high = high * (1 - _BAND_MARGIN)
    if low is not None:
        low = low * (1 + _BAND_MARGIN)
        if low >= high:
            return None
    return QuietBand(long, low, high, until)


def _leave_error(s: PositionState, now: datetime, out: list) -> PositionState:
    a = _assess(s, now)
    s = _transition(s, PHASE_STATUS[a.phase], out, last_error=None)
    return replace(s, error_until=None)


def _finish(s: PositionState, now: datetime, reason: CloseReason, out: list, *, fill_price: Decimal | None,
            total_filled: Decimal, order_id: str | None, attempts: int) -> PositionState:
    fields: dict[str, Any] = {"closed_at": now, "close_reason": reason.value, "closed_qty": total_filled,
                              "quantity": Decimal(0), "close_attempts": attempts}
    if fill_price is not None and total_filled > 0:
        a = _assess(s, s.close_triggered_at or now)
        pnl, pct = realised_pnl(s.side, s.entry_price, fill_price, total_filled, s.config)
        fields.update(close_price=fill_price, pnl=pnl, pnl_percent=pct, close_order_id=order_id,
                      phase_at_close=a.phase.value if a.phase is not Phase.NOT_AGED else None)
    s = _transition(s, Status.CLOSED, out, **fields)
    out.append(Emit("aged.close.completed", market_price=fill_price, success=True,
                    data={"close_reason": reason.value, "filled_qty": str(total_filled), "attempts": attempts,
                          "pnl_percent": str(fields.get("pnl_percent"))}))
    out.append(Stop())
    return replace(s, close_in_flight=False, needs_reconcile=False, closed_qty=total_filled, quantity=Decimal(0),
                   close_attempts=attempts, pending_update=None)


def _on_close_result(s: PositionState, e: CloseResult, out: list) -> PositionState:
    attempts = max(s.close_attempts, e.attempts)
    original = s.closed_qty + s.quantity
    total = min(max(s.closed_qty, e.filled_qty), original)
    if e.outcome == "flat" and total > 0 and e.avg_price is not None:
        a = _assess(s, s.close_triggered_at or e.now)
        reason = close_reason(s.side, s.entry_price, e.avg_price, a, s.config, emergency=_emergency_due(s, a))
        return _finish(s, e.now, reason, out, fill_price=e.avg_price, total_filled=total,
                       order_id=e.last_order_id, attempts=attempts)
    if e.outcome == "dust" and s.status != Status.DUST:
        return _dust(s, e, attempts, total, out)
    if e.outcome in ("flat", "vanished"):
        return _finish(s, e.now, CloseReason.MANUAL, out, fill_price=e.avg_price if total > 0 else None,
                       total_filled=total, order_id=e.last_order_id, attempts=attempts)
    if s.ended_during_close:
        return _finish(s, e.now, CloseReason.MANUAL, out, fill_price=e.avg_price if total > 0 else None,
                       total_filled=total, order_id=e.last_order_id, attempts=attempts)
    remaining = original - total
    if e.remaining_qty is not None:
        remaining = min(e.remaining_qty, remaining)
    pending = s.pending_update
    if pending is not None and e.remaining_qty is not None:
        pending = replace(pending, quantity=None)  # the exchange's size after the close is the fresher one
    s = replace(s, close_in_flight=False, needs_reconcile=False, quantity=max(Decimal(0), remaining),
                closed_qty=total, close_attempts=attempts, pending_update=None)
    fields = {"close_attempts": attempts, "quantity": s.quantity, "closed_qty": s.closed_qty}
    if e.outcome == "failed":
        until = e.now + s.settings.error_cooldown
        if s.status != Status.ERROR:
            s = _transition(s, Status.ERROR, out, last_error=e.error, last_close_attempt_at=e.now, **fields)
        else:
            out.append(Persist(last_error=e.error, last_close_attempt_at=e.now, **fields))
        out.append(Emit("aged.close.failed", success=False, error=e.error, critical=True,
                        data={"attempts": attempts, "retry_after": until.isoformat()}))
        out.append(ScheduleTimer(until, "cooldown"))
        s = replace(s, error_until=until)
        return s if pending is None else _apply_update(s, pending, out)
    out.append(Persist(**fields))
    return s if pending is None else _apply_update(s, pending, out)


def _dust(s: PositionState, e: CloseResult, attempts: int, total: Decimal, out: list) -> PositionState:
    """What is left is below the minimum order quantity: no order can close it."""
    left = e.remaining_qty if e.remaining_qty is not None else s.closed_qty + s.quantity - total
    s = replace(s, close_in_flight=False, needs_reconcile=False, quantity=left, closed_qty=total,
                close_attempts=attempts)
    s = _transition(s, Status.DUST, out, quantity=left, closed_qty=total, close_attempts=attempts,
                    last_error=e.error, last_close_attempt_at=e.now)
    out.append(Emit("aged.close.dust", success=False, error=e.error, critical=True,
                    data={"remaining_qty": str(left), "filled_qty": str(total), "attempts": attempts}))
    out.append(Stop())
    return s


def _on_timer(s: PositionState, e: Timer, out: list) -> PositionState:
    if s.status == Status.ERROR and s.error_until is not None and e.now >= s.error_until:
        s = _leave_error(s, e.now, out)
    s, a = _sync_phase(s, e.now, out)
    price = executable_price(s.side, e.bid, e.ask, e.last)
    if price is not None:
        # The target moved (a phase began, the allowance grew) while the price stood still.
        s = _maybe_close(s, e.now, a, price, e.bid, e.ask, e.last, out)
        _schedule_target_check(s, e.now, a, price, out)
        return s
    if s.last_price is not None and _emergency_due(s, a):
        side_price = {"bid": s.last_price} if s.side == "long" else {"ask": s.last_price}
        return _maybe_close(s, e.now, a, s.last_price, side_price.get("bid"), side_price.get("ask"), None, out)
    return s


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
        a = _assess(s, at)
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


def _schedule_target_check(s: PositionState, now: datetime, a: Assessment, price: Decimal, out: list) -> None:
    """In the progressive phase, wake again when the target will have reached ``price``
    — or after one sample interval, to look at a newer quote — whichever comes first."""
    if s.status not in ACTIVE or s.close_in_flight or a.phase is not Phase.PROGRESSIVE:
        return
    at = now + s.settings.sample_interval
    crossing = crossing_time(s, price, now)
    if crossing is not None:
        at = min(at, crossing)
    out.append(ScheduleTimer(at, "target"))


def _on_update(s: PositionState, e: PositionUpdate, out: list) -> PositionState:
    if s.status == Status.CLOSED:
        return s
    if s.close_in_flight:
        # Not now: the close decides what is left. Kept, and applied once its result is in.
        pending = e if s.pending_update is None else s.pending_update.merged_with(e)
        return replace(s, pending_update=pending)
    return _apply_update(s, e, out)


def _apply_update(s: PositionState, e: PositionUpdate, out: list) -> PositionState:
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
            a = _assess(s, e.now)
            fields.update(entry_price=s.entry_price, target_price=a.target_price,
                          breakeven_price=breakeven_price(s.side, s.entry_price, s.config),
                          loss_tolerance_percent=a.loss_tolerance_percent)
        out.append(Persist(**fields))
        out.append(Emit("position.changed", target_price=fields.get("target_price"),
                        data={"old_quantity": str(old_qty), "new_quantity": str(s.quantity),
                              "old_entry_price": str(old_entry), "new_entry_price": str(s.entry_price)}))
    if e.trailing_active is True and s.status in ACTIVE | {Status.ERROR}:
        s = _transition(s, Status.SKIPPED, out)
        out.append(Emit("skipped", data={"reason": "trailing stop active"}))
    elif e.trailing_active is False and s.status == Status.SKIPPED:
        a = _assess(s, e.now)
        s = _transition(s, PHASE_STATUS[a.phase], out)
        out.append(Emit("resumed", data={"reason": "trailing stop no longer active"}))
        s, _ = _sync_phase(s, e.now, out)
    return s


def _on_vanished(s: PositionState, e: PositionVanished, out: list) -> PositionState:
    if s.status == Status.CLOSED:
        return s
    if s.close_in_flight:
        # Our own close may have done it: its result tells. If that result leaves the
        # position open, the episode ended anyway (closed by someone else, re-entered or
        # flipped), and whatever is open now belongs to another episode.
        return replace(s, ended_during_close=True)
    return _finish(s, e.now, CloseReason.MANUAL, out, fill_price=None, total_filled=s.closed_qty, order_id=None,
                   attempts=s.close_attempts)


def _on_start(s: PositionState, e: Start, out: list) -> PositionState:
    if s.status in (Status.CLOSED, Status.DUST):
        out.append(Stop())
        return s
    if s.needs_reconcile:
        out.append(RequestClose(s.quantity, s.close_attempts + 1, reconcile_only=True))
        s = replace(s, close_in_flight=True)
    if s.status == Status.ERROR and s.error_until is None:
        s = replace(s, error_until=e.now + s.settings.error_cooldown)
        out.append(ScheduleTimer(s.error_until, "cooldown"))
    s, _ = _sync_phase(s, e.now, out)
    return s


def step(state: PositionState, event: Event) -> tuple[PositionState, list[Command]]:
    """Advance ``state`` by one event; return the new state and what to do."""
    out: list[Command] = []
    if state.status == Status.CLOSED and not isinstance(event, Start):
        return state, out
    if isinstance(event, Tick):
        state = _on_tick(state, event, out)
    elif isinstance(event, Timer):
        state = _on_timer(state, event, out)
    elif isinstance(event, CloseResult):
        state = _on_close_result(state, event, out)
    elif isinstance(event, PositionUpdate):
        state = _on_update(state, event, out)
    elif isinstance(event, PositionVanished):
        state = _on_vanished(state, event, out)
    elif isinstance(event, Start):
        state = _on_start(state, event, out)
    else:
        raise TypeError(f"unknown event {event!r}")
    return state, out
