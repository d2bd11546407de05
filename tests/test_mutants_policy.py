"""Policy promises pinned down by mutation testing (``make mutate``): actors/policy.py."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from actors.policy import (
    ConfigError, Phase, PolicyConfig, aged_at, assess, executable_price, next_phase_change, realised_pnl,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# --- configuration errors say which setting and why -----------------------------------

@pytest.mark.parametrize("value, shown", [
    (True, "True"), ("abc", "'abc'"), ([1], "list"), ("NaN", "'NaN'"),
])
def test_a_bad_number_names_the_setting_and_the_value(value, shown):
    with pytest.raises(ConfigError) as err:
        PolicyConfig(max_age_hours=value)
    assert err.value.key == "max_age_hours"
    assert "number" in str(err.value) and shown in str(err.value)


@pytest.mark.parametrize("kw, key, shown", [
    ({"grace_period_hours": -1}, "grace_period_hours", "-1"),
    ({"acceleration_factor": D("0.5")}, "acceleration_factor", "0.5"),
    ({"max_loss_percent": D("0.25")}, "max_loss_percent", "0.25"),
    ({"max_loss_percent": 100}, "max_loss_percent", "100"),
    ({"commission_percent": 50}, "commission_percent", "50"),
])
def test_an_out_of_range_setting_names_itself_and_its_value(kw, key, shown):
    with pytest.raises(ConfigError) as err:
        PolicyConfig(**kw)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ") and shown in str(err.value)


def test_commission_just_below_fifty_percent_is_allowed():
    assert PolicyConfig(commission_percent=D("49.99")).commission_percent == D("49.99")


def test_an_unknown_setting_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        PolicyConfig.from_mapping({"max_age": 3})
    assert err.value.key == "max_age"
    assert "acceleration_after_hours, acceleration_factor, commission_percent" in str(err.value)


# --- time arguments ---------------------------------------------------------------------

def test_a_naive_time_is_refused_naming_the_argument():
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match=r"\bnow\b"):
        assess("long", D(100), T0, naive, PolicyConfig())
    with pytest.raises(ValueError, match=r"\bopened_at\b"):
        assess("long", D(100), naive, T0, PolicyConfig())
    with pytest.raises(ValueError, match=r"\bopened_at\b"):
        aged_at(naive, PolicyConfig())


def test_age_is_exact_to_the_microsecond_even_centuries_back():
    opened = datetime(1700, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)
    micros = (T0 - opened) // timedelta(microseconds=1)
    a = assess("long", D(100), opened, T0, PolicyConfig())
    assert a.age_hours == D(micros) / D(3_600_000_000)


# --- assessments carry their numbers in every phase ---------------------------------------

def test_a_young_position_reports_its_age_and_breakeven():
    a = assess("long", D(100), T0, h(1), PolicyConfig())
    assert a.phase is Phase.NOT_AGED and a.target_price is None
    assert a.age_hours == 1 and a.hours_over == -2
    assert a.breakeven_price == D("100.2")


def test_a_grace_position_reports_its_age():
    a = assess("short", D(100), T0, h(5), PolicyConfig())
    assert a.phase is Phase.GRACE and a.age_hours == 5 and a.hours_over == 2
    assert a.target_price == a.breakeven_price == D("99.8")


# --- prices ------------------------------------------------------------------------------

def test_no_price_at_all_is_no_executable_price():
    assert executable_price("long") is None
    assert executable_price("short", None, None, None) is None


def test_a_short_realises_the_fall_in_price_minus_both_fees():
    cfg = PolicyConfig()
    pnl, pct = realised_pnl("short", D(100), D(90), D(2), cfg)
    # (100 - 90) * 2 - 0.1 % of (100 + 90) * 2
    assert pnl == D(20) - D("0.38")
    assert pct == D(10) - D("0.2")
    pnl, _ = realised_pnl("short", D(100), D(110), D(1), cfg)
    assert pnl == D(-10) - D("0.21")


# --- phase changes happen just after their boundary -----------------------------------------

def test_at_a_boundary_the_next_change_is_that_boundary():
    cfg = PolicyConfig()
    assert next_phase_change(T0, h(3), cfg) == h(3)
    assert next_phase_change(T0, h(3) + timedelta(microseconds=1), cfg) == h(11)
    assert next_phase_change(T0, h(11), cfg) == h(11)
    assert next_phase_change(T0, h(11) + timedelta(microseconds=1), cfg) is None


def test_sides_normalise_to_long_and_short():
    from actors.policy import normalize_side
    assert [normalize_side(s) for s in ("long", "BUY", " Short ", "sell")] == ["long", "long", "short", "short"]


def test_a_time_without_a_usable_offset_or_not_a_time_is_refused():
    from datetime import tzinfo

    class NoOffset(tzinfo):
        def utcoffset(self, dt):
            return None

    with pytest.raises(ValueError, match=r"\bnow\b"):
        assess("long", D(100), T0, datetime(2026, 1, 1, tzinfo=NoOffset()), PolicyConfig())
    with pytest.raises(ValueError, match=r"\bnow\b"):
        assess("long", D(100), T0, "2026-01-02T00:00:00+00:00", PolicyConfig())


def test_a_float_price_is_never_used():
    assert executable_price("long", bid=99.5) is None  # type: ignore[arg-type]
    assert executable_price("short", ask=100.5, last=D(100)) == D(100)  # type: ignore[arg-type]
