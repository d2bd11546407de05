"""Where a position stands in the policy, and how its status follows.

The policy (:mod:`actors.policy`) says which phase an instant falls in; these helpers
keep the status in step with it (:func:`sync_phase`), make every status change through
the one door that checks it is legal (:func:`transition`), and bring a position back
from ``error`` once its cool-down is over (:func:`leave_error`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from actors.policy import Assessment, Phase, aged_at, next_phase_change
from actors.position.commands import Emit, Persist, ScheduleTimer
from actors.position.state import LEGAL, PHASE_STATUS, PositionState
from actors.statuses import ACTIVE, Status


def assess_state(s: PositionState, now: datetime) -> Assessment:
    """Where ``s`` stands in the policy at ``now``: phase, target, allowance (from its schedule)."""
    return s.schedule.assess(now)


def hours_fields(s: PositionState, a: Assessment) -> dict[str, Any]:
    """The row's hour counters at ``a``: hours aged, hours spent in grace, hours in progressive."""
    over = max(Decimal(0), a.hours_over)
    grace = min(over, s.config.grace_period_hours)
    return {
        "hours_aged": a.age_hours,
        "hours_in_grace": grace,
        "hours_in_progressive": max(Decimal(0), over - s.config.grace_period_hours),
    }


def transition(s: PositionState, new_status: Status, out: list, **fields) -> PositionState:
    """Move to ``new_status`` and persist it together with ``fields``.

    Every status change goes through here: one that :data:`LEGAL` does not list is a bug,
    and raises. Staying in the same status persists only ``fields`` (if any).
    """
    if new_status == s.status:
        if fields:
            out.append(Persist(**fields))
        return s
    if new_status not in LEGAL[s.status]:
        raise AssertionError(f"illegal status change {s.status} -> {new_status}")
    out.append(Persist(status=new_status, **fields))
    return replace(s, status=new_status)


def phase_boundaries(s: PositionState) -> tuple[datetime, datetime]:
    """The instants grace starts and ends; progressive starts where grace ends."""
    start = aged_at(s.opened_at, s.config)
    return start, start + timedelta(microseconds=int(s.config.grace_period_hours * 3_600_000_000))


def sync_phase(s: PositionState, now: datetime, out: list) -> tuple[PositionState, Assessment]:
    """Move the status to the phase the clock says, and keep the phase timer set."""
    a = assess_state(s, now)
    if s.status in ACTIVE:
        wanted = PHASE_STATUS[a.phase]
        if wanted != s.status:
            grace_start, grace_end = phase_boundaries(s)
            fields: dict[str, Any] = {
                "target_price": a.target_price,
                "loss_tolerance_percent": a.loss_tolerance_percent,
                **hours_fields(s, a),
            }
            if a.phase is not Phase.NOT_AGED:
                fields["grace_started_at"] = grace_start
            if a.phase is Phase.PROGRESSIVE:
                fields["progressive_started_at"] = grace_end
            old = s.status
            s = transition(s, wanted, out, **fields)
            out.append(
                Emit(
                    "aged.phase.changed",
                    target_price=a.target_price,
                    data={
                        "from": old,
                        "to": wanted,
                        "phase": a.phase.value,
                        "loss_tolerance_percent": str(a.loss_tolerance_percent),
                    },
                )
            )
    nxt = next_phase_change(s.opened_at, now, s.config)
    if nxt is not None:
        out.append(ScheduleTimer(nxt + timedelta(microseconds=1), "phase"))
    return s, a


def emergency_due(s: PositionState, a: Assessment) -> bool:
    """True once the position is old enough for an emergency close (when that is turned on)."""
    limit = s.settings.emergency_close_after_hours
    return limit is not None and a.age_hours >= limit


def leave_error(s: PositionState, now: datetime, out: list) -> PositionState:
    """Back from ``error`` to the status of the current phase, the last error cleared."""
    a = assess_state(s, now)
    s = transition(s, PHASE_STATUS[a.phase], out, last_error=None)
    return replace(s, error_until=None)
