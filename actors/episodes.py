"""Position episodes: where an episode began, read from the exchange's fill history.

An *episode* runs from the moment (exchange, symbol, side) goes from flat to non-flat
until it is flat again; a side flip ends one and starts the next. These functions are
pure: they take fills and the position as the exchange shows it now, and say when the
current episode began. The detector (:mod:`actors.detector`) does the looking up.

Walking back from the current signed size through the fills, newest first, the size
before each fill is the size after it minus the fill. The first fill (going back)
before which the size was zero or on the other side is the one that opened the current
episode. Nothing before it matters, so a walk can stop there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from exchanges.port import Fill

# Sources of an episode's open time, in order of trust. STREAM: the account stream
# showed the symbol flat and then open, so the change's own time is the opening.
BOT, STREAM, EXCHANGE = "bot", "stream", "exchange"
FILLS, FILLS_BOUND, FIRST_SEEN = "fills", "fills_bound", "first_seen"


@dataclass(frozen=True)
class OpenTime:
    at: datetime
    source: str


def _signed(side: str, qty: Decimal) -> Decimal:
    return qty if side == "long" else -qty


def opening_fill(fills: Sequence[Fill], side: str, qty: Decimal) -> Fill | None:
    """The fill that opened the current ``side``/``qty`` episode, or None if ``fills``
    (oldest first) do not reach back to it."""
    after = _signed(side, qty)
    if after == 0:
        return None
    for fill in reversed(fills):
        before = after - (fill.qty if fill.side == "buy" else -fill.qty)
        if before == 0 or (before > 0) != (after > 0):
            return fill
        after = before
    return None


def open_time(
    fills: Sequence[Fill], side: str, qty: Decimal, *, window_start: datetime, first_seen: datetime
) -> OpenTime:
    """When the current episode began, from the fills since ``window_start``.

    Found in the fills: that fill's time. Not found, but the history shows fills on
    the symbol: the position has been open without a break since at least
    ``window_start`` (a bound that makes it age later, never sooner). No fills at all:
    the history says nothing, and the moment first seen is all that is known.
    """
    fill = opening_fill(fills, side, qty)
    if fill is not None:
        return OpenTime(fill.time, FILLS)
    if fills:
        return OpenTime(window_start, FILLS_BOUND)
    return OpenTime(first_seen, FIRST_SEEN)


CLOCK_SKEW = timedelta(seconds=5)
"""The allowance between the exchange's clock and ours when fill times are compared
with times we saw (the detector's and the executor's episode checks)."""


def reentered_at(
    fills: Sequence[Fill], side: str, qty: Decimal, *, last_look: datetime, opened_at: datetime, skew: timedelta
) -> datetime | None:
    """If the position went flat and was opened again since ``last_look``, when.

    ``fills`` cover at least the time since ``last_look - skew``. A fill counts as a
    new opening only if it is later than both the last look and the episode's known
    open time (each less ``skew``, the allowance between the exchange's clock and ours).
    """
    fill = opening_fill(fills, side, qty)
    if fill is None:
        return None
    if fill.time > last_look - skew and fill.time > opened_at + skew:
        return fill.time
    return None
