"""Quiet bands: the ticks that cannot change a position, known in advance.

Most ticks change nothing. The actor publishes the band of prices and time for which
that is certain (:func:`quiet_band`), and its mailbox drops such ticks without waking
it (:mod:`actors.mailbox`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from actors.policy import executable_price_for, next_phase_change
from actors.position.phases import assess_state, emergency_due
from actors.position.state import PHASE_STATUS, PositionState
from actors.statuses import ACTIVE, Status

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
    a = assess_state(s, now)
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
        if emergency_due(s, a):
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
    end = assess_state(s, until)
    if end.phase is not a.phase or end.target_price is None:
        return None
    t_min, t_max = min(a.target_price, end.target_price), max(a.target_price, end.target_price)
    last, material = s.last_sample_distance, s.settings.material_change_percent
    assert last is not None  # a target and no sample returned above
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
