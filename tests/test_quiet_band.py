"""Quiet bands: the ticks a position actor's mailbox may drop without waking it.

The one property that matters: for a tick the band calls quiet, ``step`` returns the
same state and no commands. It is checked with Hypothesis along random event sequences
(the stateful machine of test_position_step, plus probes), and on hand-picked edges.
Rules: no trio, no database, no clock; events carry their own time.
"""

from datetime import timedelta
from decimal import Decimal as D

import pytest
from hypothesis import assume, event, given, settings, strategies as st
from hypothesis.stateful import rule

from actors.position import CloseResult, QuietBand, Settings, Start, Tick, quiet_band, step
from tests.test_position_step import PositionMachine, h, new_state

_TINY = D("1e-12")


def _probe_price(band: QuietBand, fraction: D) -> D:
    """A price inside the band (unbounded sides are taken 30 % beyond the other bound or 100)."""
    low = band.low if band.low is not None else (band.high * D("0.7") if band.high is not None else D(70))
    high = band.high if band.high is not None else low * D("1.3")
    return low + (high - low) * fraction


def _tick(band: QuietBand, at, price: D) -> Tick:
    return Tick(at, bid=price, ask=price + D("0.01"), last=price) if band.long else \
        Tick(at, bid=price - D("0.01"), ask=price, last=price)


def assert_quiet_is_a_no_op(s, band, at, price):
    tick = _tick(band, at, price)
    assert band.quiet_price(tick.bid, tick.ask, tick.last)
    s2, cmds = step(s, tick)
    assert cmds == [] and s2 == s, (band, at, price, cmds)


class QuietBandMachine(PositionMachine):
    """Random lifecycles; at any point, every tick the band calls quiet must be a no-op."""

    @rule(data=st.data())
    def probe_the_band(self, data):
        band = quiet_band(self.s, self.now)
        event(f"band: {'none' if band is None else self.s.status}")
        if band is None:
            return
        assert band.until > self.now
        span = (band.until - self.now) // timedelta(microseconds=1)
        at = self.now + timedelta(microseconds=data.draw(st.integers(0, max(0, span - 1)), label="µs after now"))
        fraction = data.draw(st.one_of(st.just(_TINY), st.just(1 - _TINY),
                                       st.decimals(_TINY, 1 - _TINY, places=12)), label="where in the band")
        assert_quiet_is_a_no_op(self.s, band, at, _probe_price(band, fraction))

    @rule(seconds=st.integers(0, 90))
    def advance_a_little(self, seconds):
        self.now += timedelta(seconds=seconds)


TestQuietBandMachine = QuietBandMachine.TestCase
TestQuietBandMachine.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)


@settings(max_examples=1500, deadline=None)
@given(side=st.sampled_from(["long", "short"]), start_h=st.floats(2.9, 45, allow_nan=False),
       offset=st.decimals(D("-0.03"), D("0.03"), places=6), since=st.integers(0, 120_000_000),
       interval_s=st.integers(1, 120), material=st.decimals(D("0.01"), D(3), places=2),
       emergency_h=st.one_of(st.none(), st.decimals(D(3), D(50), places=4)),
       fail_first=st.booleans(), cooldown_s=st.integers(1, 200), data=st.data())
def test_a_quiet_tick_is_a_no_op_for_a_watched_position(side, start_h, offset, since, interval_s, material,
                                                        emergency_h, fail_first, cooldown_s, data):
    """Positions under watch — grace, progressive, error, a close in flight — after a sample."""
    settings_ = Settings(sample_interval=timedelta(seconds=interval_s), material_change_percent=material,
                         error_cooldown=timedelta(seconds=cooldown_s), emergency_close_after_hours=emergency_h)
    at = h(start_h)
    s, _ = step(new_state(side=side, settings=settings_), Start(at))
    target = s.schedule.assess(at).target_price or s.schedule.breakeven
    price = (target * (1 + offset)).quantize(D("0.0001"))
    s, _ = step(s, Tick(at, bid=price, ask=price, last=price))
    if s.close_in_flight and fail_first:
        s, _ = step(s, CloseResult(at, "failed", attempts=3, error="x"))  # → error, cool-down
    now = at + timedelta(microseconds=since)
    band = quiet_band(s, now)
    event(f"{s.status}: {'no band' if band is None else 'band'}")
    assume(band is not None)
    span = (band.until - now) // timedelta(microseconds=1)
    assert span > 0
    probe_at = now + timedelta(microseconds=data.draw(st.integers(0, span - 1)))
    fraction = data.draw(st.one_of(st.just(_TINY), st.just(1 - _TINY), st.decimals(_TINY, 1 - _TINY, places=12)))
    assert_quiet_is_a_no_op(s, band, probe_at, _probe_price(band, fraction))


# --- edges ---------------------------------------------------------------------------------

def sampled(side="long", at=h(12), price=D("99.2"), **kw):
    """A progressive position that has just taken its first price sample."""
    s, _ = step(new_state(side=side, **kw), Start(at))
    s, cmds = step(s, Tick(at, bid=price, ask=price, last=price))
    assert s.last_sample_at == at and not s.close_in_flight
    return s


def test_no_band_until_the_first_sample():
    s, _ = step(new_state(), Start(h(12)))
    assert quiet_band(s, h(12)) is None  # the next tick must be sampled, whatever its price


def test_a_long_band_lies_below_the_target_and_around_the_last_sample():
    s = sampled("long", price=D("99.2"))  # target 99.5 at 12 h: a long closes at a bid >= 99.5
    band = quiet_band(s, h(12))
    assert band is not None and band.long
    assert band.low < D("99.2") < band.high
    # a close triggers at price >= target; the target only falls with time, so the band
    # stays below the target at the band's end
    end_target = s.schedule.assess(band.until).target_price
    assert band.high < end_target <= D("99.5")
    assert not band.quiet_price(end_target, None, None)
    assert band.until == h(12) + Settings().sample_interval


def test_a_short_band_lies_above_the_target():
    s = sampled("short", price=D("100.8"))  # short target 100.5 at 12 h: it closes at an ask <= 100.5
    band = quiet_band(s, h(12))
    assert band is not None and not band.long
    end_target = s.schedule.assess(band.until).target_price
    assert band.low > end_target >= D("100.5")
    assert band.quiet_price(None, D("100.8"), None)
    assert not band.quiet_price(None, end_target, None)


def test_crossing_ticks_are_never_quiet_and_do_close():
    s = sampled("long", price=D("99.4"))  # below the 99.5 target: no close yet
    band = quiet_band(s, h(12))
    assert not band.quiet_price(D("99.5"), None, None)
    _, cmds = step(s, Tick(h(12) + timedelta(seconds=1), bid=D("99.5")))
    assert any(type(c).__name__ == "RequestClose" for c in cmds)


def test_a_material_move_is_not_quiet():
    s = sampled("long", price=D("99.0"))
    band = quiet_band(s, h(12))
    assert band.quiet_price(D("98.9"), None, None)
    assert not band.quiet_price(D("98.4"), None, None)  # distance moved more than 0.5 points
    _, cmds = step(s, Tick(h(12) + timedelta(seconds=1), bid=D("98.4")))
    assert [type(c).__name__ for c in cmds].count("Emit") == 1


def test_a_tick_without_an_executable_price_is_quiet():
    band = quiet_band(sampled(), h(12))
    assert band.quiet_price(None, None, None)
    assert band.quiet_price(None, D(100), None)  # a long looks at the bid, then the last price


def test_the_band_ends_at_the_next_phase_change():
    s = sampled("long", at=h(10), price=D("100.0"))  # grace ends at 11 h
    band = quiet_band(s, h(10) + timedelta(seconds=59, microseconds=999_000))
    assert band.until <= h(11)
    s = sampled("long", at=h(11) - timedelta(seconds=10), price=D("100.0"))
    assert quiet_band(s, h(11) - timedelta(seconds=10)).until == h(11)


def test_the_band_ends_when_an_emergency_close_falls_due():
    limit = D("12.01")  # 12 h 36 s
    s = sampled("long", at=h(12), price=D("99.0"),
                settings=Settings(emergency_close_after_hours=limit))
    band = quiet_band(s, h(12))
    assert band.until == h(12) + timedelta(seconds=36)
    assert quiet_band(s, h(12) + timedelta(seconds=36)) is None


def test_the_band_ends_with_the_error_cool_down():
    s, _ = step(new_state(settings=Settings(error_cooldown=timedelta(seconds=30))), Start(h(12)))
    s, _ = step(s, Tick(h(12), bid=D("99.6")))  # crosses: a close is requested
    assert s.close_in_flight
    s, _ = step(s, CloseResult(h(12), "failed", attempts=3, error="x"))
    assert s.status == "error" and s.error_until == h(12) + timedelta(seconds=30)
    s, _ = step(s, Tick(h(12) + timedelta(seconds=1), bid=D("99.4")))
    band = quiet_band(s, h(12) + timedelta(seconds=1))
    assert band is not None and band.until == s.error_until  # before the next sample falls due
    assert quiet_band(s, s.error_until) is None


@pytest.mark.parametrize("side", ["long", "short"])
def test_no_band_once_a_sample_is_due(side):
    s = sampled(side, price=D("99.2") if side == "long" else D("100.8"))
    assert quiet_band(s, h(12) + Settings().sample_interval) is None
