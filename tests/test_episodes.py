"""Episodes from fills: the pure rules of actors/episodes.py.

A trading bot's history on one symbol is a list of fills; the position after them is
their signed sum. The opening of the current episode is the last fill that took the
position from flat (or from the other side). Hypothesis builds histories of opens,
adds, partial reductions, full closes and flips and checks the walk back finds it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

from actors import episodes as ep
from exchanges.port import Fill

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def fill(i: int, side: str, qty: str, minutes: float | None = None) -> Fill:
    return Fill(f"f{i}", T0 + timedelta(minutes=i if minutes is None else minutes), side, D(qty), D(100))


def test_the_opening_fill_of_a_reentry_is_the_new_one():
    fills = [fill(0, "buy", "1"), fill(1, "sell", "1"), fill(2, "buy", "2")]
    assert ep.opening_fill(fills, "long", D(2)) == fills[2]


def test_averaging_in_and_reducing_keep_the_first_opening():
    fills = [fill(0, "buy", "1"), fill(1, "buy", "1"), fill(2, "sell", "0.5")]
    assert ep.opening_fill(fills, "long", D("1.5")) == fills[0]


def test_a_flip_opens_at_the_fill_that_crossed_zero():
    fills = [fill(0, "buy", "1"), fill(1, "sell", "3")]
    assert ep.opening_fill(fills, "short", D(2)) == fills[1]


def test_history_that_does_not_reach_the_opening():
    fills = [fill(5, "buy", "1")]  # the position is 3: it was already 2 before the window
    assert ep.opening_fill(fills, "long", D(3)) is None
    start = T0 - timedelta(days=30)
    assert ep.open_time(fills, "long", D(3), window_start=start, first_seen=T0 + timedelta(days=1)) == \
        ep.OpenTime(start, ep.FILLS_BOUND)
    # no fills at all: nothing is known but the moment first seen (never older)
    assert ep.open_time([], "long", D(3), window_start=start, first_seen=T0) == ep.OpenTime(T0, ep.FIRST_SEEN)


def test_reentry_is_only_a_new_opening_after_the_last_look():
    last_look = T0 + timedelta(minutes=10)
    skew = timedelta(seconds=5)
    reopened = [fill(0, "buy", "1"), fill(11, "sell", "1"), fill(12, "buy", "1")]
    assert ep.reentered_at(reopened, "long", D(1), last_look=last_look, opened_at=T0, skew=skew) == \
        reopened[2].time
    averaged = [fill(0, "buy", "1"), fill(12, "buy", "1")]
    assert ep.reentered_at(averaged, "long", D(2), last_look=last_look, opened_at=T0, skew=skew) is None
    # an opening we already know (first look came right after it) is not a re-entry
    early = [fill(10, "buy", "1", minutes=9.99), fill(11, "buy", "1")]
    assert ep.reentered_at(early, "long", D(2), last_look=last_look, opened_at=early[0].time, skew=skew) is None


# One step of a bot: (kind, size) where kind is open/add/reduce/close/flip.
steps = st.lists(st.tuples(st.sampled_from(["open", "add", "reduce", "close", "flip"]),
                           st.integers(min_value=1, max_value=5)), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from(["long", "short"]))
def test_the_walk_back_finds_the_last_flat_to_open_fill(script, first_side):
    fills: list[Fill] = []
    pos = D(0)
    opening: Fill | None = None
    side_sign = 1 if first_side == "long" else -1
    for i, (kind, size) in enumerate(script):
        size = D(size)
        if pos == 0:
            if kind in ("reduce", "close"):
                continue
            delta = size * side_sign
        elif kind == "open" or kind == "add":
            delta = size if pos > 0 else -size
        elif kind == "reduce":
            delta = -min(size, abs(pos) - D("0.5")) if abs(pos) > D("0.5") else D(0)
            delta = delta if pos > 0 else -delta
            if delta == 0:
                continue
        elif kind == "close":
            delta = -pos
        else:  # flip: through zero to the other side
            delta = -pos - (size if pos > 0 else -size)
        f = Fill(f"f{i}", T0 + timedelta(seconds=i), "buy" if delta > 0 else "sell", abs(delta), D(100))
        before, pos = pos, pos + delta
        fills.append(f)
        if pos != 0 and (before == 0 or (before > 0) != (pos > 0)):
            opening = f
    if pos == 0:
        assert ep.opening_fill(fills, "long", D(0)) is None
        return
    side = "long" if pos > 0 else "short"
    assert ep.opening_fill(fills, side, abs(pos)) == opening
