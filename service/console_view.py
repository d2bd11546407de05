"""The console's view of one aged position: pure functions of a row, a price, a policy and now.

Nothing here reads a clock or a database. :func:`position_view` turns a row of
:meth:`storage.console_store.ConsoleStore.positions_overview` into the object
``GET /api/positions`` returns; :func:`next_step` answers "when does the target move
next, and to what?" from the policy alone (:mod:`actors.policy`).

The *steps* of the schedule, as an operator reads them:

* not aged yet → the instant it ages; the target after it is breakeven;
* grace → the end of grace; the progressive phase starts at a tolerance of 0, so the
  target after it is the entry price (the fees are no longer covered);
* progressive → the next whole hour of the progressive phase (the policy adds
  ``loss_step_percent`` per hour, continuously: the whole hours are its steps); the
  target then, which is the capped target once the cap is reached;
* at the cap, or with a step of 0 → no next step (``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from actors.policy import Phase, PolicyConfig, Schedule, aged_at, executable_price

__all__ = ["Step", "distance_percent", "next_step", "position_view"]

_MICROS_PER_HOUR = Decimal(3_600_000_000)


@dataclass(frozen=True, slots=True)
class Step:
    """The next change of the schedule: at ``at`` the target becomes ``target``
    (``phase`` and ``loss_tolerance_percent`` from then on)."""

    at: datetime
    target: Decimal
    phase: Phase
    loss_tolerance_percent: Decimal


def _after(start: datetime, hours: Decimal) -> datetime:
    return start + timedelta(microseconds=int(hours * _MICROS_PER_HOUR))


def next_step(schedule: Schedule, now: datetime) -> Step | None:
    """The next step of ``schedule`` after ``now`` (see the module docstring)."""
    config = schedule.config
    a = schedule.assess(now)
    start_grace = aged_at(schedule.opened_at, config)
    if a.phase is Phase.NOT_AGED:
        return Step(start_grace, schedule.breakeven, Phase.GRACE, Decimal(0))
    end_grace = _after(start_grace, config.grace_period_hours)
    if a.phase is Phase.GRACE:
        return Step(end_grace, schedule.entry_price, Phase.PROGRESSIVE, Decimal(0))
    if a.at_cap or config.loss_step_percent == 0:
        return None
    progressive_hours = a.hours_over - config.grace_period_hours
    whole = progressive_hours.to_integral_value(rounding=ROUND_FLOOR) + 1
    at = _after(end_grace, whole)
    later = schedule.assess(at)
    assert later.target_price is not None  # progressive
    return Step(at, later.target_price, Phase.PROGRESSIVE, later.loss_tolerance_percent)


def distance_percent(side: str, price: Decimal, target: Decimal) -> Decimal:
    """How far the executable price still has to move to reach the target, in percent of
    the target (≤ 0: reached)."""
    gap = (target - price) if side == "long" else (price - target)
    return gap / target * 100


def _hours(delta: timedelta) -> Decimal:
    return Decimal(delta // timedelta(microseconds=1)) / _MICROS_PER_HOUR


def position_view(
    row: Mapping[str, Any],
    now: datetime,
    policy: PolicyConfig,
    *,
    bid: Decimal | None = None,
    ask: Decimal | None = None,
    last: Decimal | None = None,
    quote_at: datetime | None = None,
) -> dict[str, Any]:
    """The console's object for one aged position (a ``positions_overview`` row).

    The size and entry are the episode's (the exchange's, after any averaging in).
    ``bid``/``ask``/``last`` are the feed's latest quote, when there is one; without it
    the price is the last sampled price check (``price_source`` says which).
    ``policy`` is the policy in force for this position (the configured one with its
    symbol's override applied).
    """
    side = row["side"]
    entry = row.get("episode_entry_price") or row["entry_price"]
    quantity = row.get("episode_quantity")
    if quantity is None:
        quantity = row["quantity"]
    schedule = Schedule.of(side, entry, row["position_opened_at"], policy)
    a = schedule.assess(now)
    price = executable_price(side, bid, ask, last)
    source: str | None = "feed"
    price_at = quote_at
    if price is None:
        price, source, price_at = row.get("last_checked_price"), "sampled", row.get("last_price_check")
        if price is None:
            source = None
    target = a.target_price
    step = next_step(schedule, now)
    hold_until = row.get("hold_until")
    held = hold_until is not None and hold_until > now
    return {
        "id": str(row["id"]),
        "position_id": row["position_id"],
        "account": row.get("account") or row["exchange"],
        "exchange": row["exchange"],
        "symbol": row["symbol"],
        "side": side,
        "quantity": quantity,
        "entry_price": entry,
        "opened_at": row["position_opened_at"],
        "detected_at": row["detected_at"],
        "age_hours": a.age_hours,
        "status": row["status"],
        "phase": a.phase.value,
        "price": price,
        "price_source": source,
        "price_at": price_at,
        "target_price": target,
        "breakeven_price": schedule.breakeven,
        "loss_tolerance_percent": a.loss_tolerance_percent,
        "at_cap": a.at_cap,
        "distance_percent": None if price is None or target is None else distance_percent(side, price, target),
        "next_step_at": None if step is None else step.at,
        "next_target_price": None if step is None else step.target,
        "hold_until": hold_until,
        "hold_reason": row.get("hold_reason"),
        "held": held,
        "close_attempts": row["close_attempts"],
        "last_error": row.get("last_error_message"),
    }
