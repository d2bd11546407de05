"""The aging policy against the specification's worked examples, and its properties.

Rules: pure functions only; no clock, no I/O. Exact Decimal comparisons.
"""

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from actors.policy import (
    CloseReason, ConfigError, Phase, PolicyConfig, aged_at, assess, close_reason,
    executable_price, next_phase_change, realised_pnl, should_close,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
CFG = PolicyConfig()


def at(hours) -> datetime:
    return T0 + timedelta(hours=float(hours)) if not isinstance(hours, D) else T0 + timedelta(
        microseconds=int(hours * 3_600_000_000))


# side, entry, age hours, phase, tolerance, target  (SPEC §2 worked examples)
SPEC_TABLE = [
    ("long", D(100), D("2.5"), "not_aged", None, None),
    ("long", D(100), D(3), "not_aged", None, None),
    ("long", D(100), D(5), "grace", D(0), D("100.2")),
    ("short", D(100), D(5), "grace", D(0), D("99.8")),
    ("long", D(100), D(11), "grace", D(0), D("100.2")),
    ("long", D(100), D(12), "progressive", D("0.5"), D("99.5")),
    ("short", D(100), D(12), "progressive", D("0.5"), D("100.5")),
    ("long", D(100), D(21), "progressive", D("5.0"), D(95)),
    ("long", D(100), D(26), "progressive", D("8.0"), D(92)),
    ("short", D(100), D(26), "progressive", D("8.0"), D(108)),
    ("long", D(100), D(40), "progressive", D(10), D(90)),
    ("short", D("0.01671"), D("13.5"), "progressive", D("1.25"), D("0.016918875")),
]


@pytest.mark.parametrize("side,entry,age,phase,tolerance,target", SPEC_TABLE)
def test_spec_worked_examples(side, entry, age, phase, tolerance, target):
    a = assess(side, entry, T0, at(age), CFG)
    assert a.phase == phase
    assert a.phase.value == phase
    if tolerance is None:
        assert a.target_price is None
        assert a.loss_tolerance_percent == 0
    else:
        assert a.loss_tolerance_percent == tolerance
        assert a.target_price == target


def test_cap_first_reached_at_29_and_a_third_hours():
    just_before = assess("long", D(100), T0, at(D("29.33")), CFG)
    assert not just_before.at_cap and just_before.loss_tolerance_percent < 10
    reached = assess("long", D(100), T0, T0 + timedelta(hours=29, minutes=20), CFG)
    assert reached.at_cap and reached.loss_tolerance_percent == 10


def test_exact_phase_boundaries_to_the_microsecond():
    one_us = timedelta(microseconds=1)
    boundary = aged_at(T0, CFG)
    assert boundary == T0 + timedelta(hours=3)
    assert assess("long", D(100), T0, boundary, CFG).phase is Phase.NOT_AGED
    assert assess("long", D(100), T0, boundary + one_us, CFG).phase is Phase.GRACE
    grace_end = T0 + timedelta(hours=11)
    assert assess("long", D(100), T0, grace_end, CFG).phase is Phase.GRACE
    after = assess("long", D(100), T0, grace_end + one_us, CFG)
    assert after.phase is Phase.PROGRESSIVE
    # tolerance starts from zero and grows continuously (no jump to a full step)
    assert D(0) < after.loss_tolerance_percent < D("0.000001")


def test_tolerance_grows_continuously_within_the_hour():
    quarter = assess("long", D(100), T0, at(D("11.25")), CFG)
    assert quarter.loss_tolerance_percent == D("0.125")


def test_side_aliases_and_case():
    for alias, canonical in (("buy", "long"), ("SELL", "short"), ("Long", "long")):
        assert assess(alias, D(100), T0, at(5), CFG) == assess(canonical, D(100), T0, at(5), CFG)
    with pytest.raises(ValueError, match="side"):
        assess("flat", D(100), T0, at(5), CFG)


def test_naive_datetimes_and_bad_prices_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        assess("long", D(100), datetime(2026, 1, 1), at(5), CFG)
    for bad in (D(0), D(-1), D("NaN"), 100.0):
        with pytest.raises(ValueError, match="entry_price"):
            assess("long", bad, T0, at(5), CFG)


def test_should_close_uses_bid_for_long_and_ask_for_short():
    a_long = assess("long", D(100), T0, at(5), CFG)  # target 100.2
    assert should_close(a_long, "long", bid=D("100.2"), ask=D("100.3"))
    assert not should_close(a_long, "long", bid=D("100.19"), ask=D("100.3"), last=D("101"))
    assert should_close(a_long, "long", last=D("100.25"))  # no bid known: last is the fallback
    a_short = assess("short", D(100), T0, at(5), CFG)  # target 99.8
    assert should_close(a_short, "short", bid=D("99.7"), ask=D("99.8"))
    assert not should_close(a_short, "short", bid=D("99.0"), ask=D("99.81"), last=D("99"))
    assert not should_close(assess("long", D(100), T0, at(2), CFG), "long", bid=D(1000))


def test_nonsense_prices_never_trigger_a_close():
    a = assess("short", D(100), T0, at(40), CFG)  # target 110: a zero ask would "qualify"
    for bad in (D(0), D(-5), D("NaN")):
        assert not should_close(a, "short", ask=bad)
        assert executable_price("short", ask=bad) is None
    assert not should_close(a, "short")


@pytest.mark.parametrize("side,fill,age,expected", [
    ("long", D(101), 5, CloseReason.PROFITABLE),        # net +0.8
    ("long", D("100.2"), 5, CloseReason.BREAKEVEN),     # net 0
    ("long", D("100.25"), 5, CloseReason.BREAKEVEN),    # net +0.05 (edge)
    ("long", D("100.26"), 5, CloseReason.PROFITABLE),   # net +0.06
    ("long", D("100.15"), 5, CloseReason.BREAKEVEN),    # net -0.05 (edge)
    ("long", D("99.5"), 12, CloseReason.LOSS_ACCEPTABLE),
    ("short", D("100.5"), 12, CloseReason.LOSS_ACCEPTABLE),
    ("long", D(90), 40, CloseReason.MAX_LOSS),
    ("short", D(110), 40, CloseReason.MAX_LOSS),
    ("short", D(95), 40, CloseReason.PROFITABLE),
])
def test_close_reason(side, fill, age, expected):
    a = assess(side, D(100), T0, at(age), CFG)
    assert close_reason(side, D(100), fill, a, CFG) is expected


def test_close_reason_emergency_wins():
    a = assess("long", D(100), T0, at(40), CFG)
    assert close_reason("long", D(100), D(150), a, CFG, emergency=True) is CloseReason.EMERGENCY


def test_realised_pnl_includes_both_fees():
    pnl, pct = realised_pnl("long", D(100), D(101), D(2), CFG)
    assert pnl == D(2) - D("0.001") * D(201) * 2
    assert pct == D("0.8")
    pnl, pct = realised_pnl("short", D(100), D(101), D(1), CFG)
    assert pct == D("-1.2")


def test_next_phase_change():
    assert next_phase_change(T0, at(1), CFG) == T0 + timedelta(hours=3)
    assert next_phase_change(T0, at(5), CFG) == T0 + timedelta(hours=11)
    assert next_phase_change(T0, at(12), CFG) is None


# --- configuration ------------------------------------------------------------------

def test_defaults_are_the_spec_defaults_and_decimal():
    assert CFG.as_dict() == {
        "max_age_hours": "3", "grace_period_hours": "8", "loss_step_percent": "0.5",
        "acceleration_after_hours": "10", "acceleration_factor": "1.2",
        "max_loss_percent": "10", "commission_percent": "0.1",
    }
    assert all(isinstance(v, D) for v in vars(CFG).values())


def test_keyword_construction_converts_ints_strings_and_floats_exactly():
    cfg = PolicyConfig(max_age_hours=D(3), grace_period_hours=4, loss_step_percent="0.25", commission_percent=0.1)
    assert cfg.grace_period_hours == D(4) and cfg.loss_step_percent == D("0.25")
    assert cfg.commission_percent == D("0.1")


@pytest.mark.parametrize("kwargs,key", [
    ({"max_age_hours": -1}, "max_age_hours"),
    ({"grace_period_hours": "eight"}, "grace_period_hours"),
    ({"loss_step_percent": None}, "loss_step_percent"),
    ({"acceleration_factor": D("0.9")}, "acceleration_factor"),
    ({"max_loss_percent": D("0.1")}, "max_loss_percent"),  # below the step
    ({"commission_percent": True}, "commission_percent"),
    ({"max_loss_percent": "Infinity"}, "max_loss_percent"),
    ({"max_loss_percent": 100}, "max_loss_percent"),
])
def test_invalid_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        PolicyConfig(**kwargs)
    assert err.value.key == key
    assert key in str(err.value)


def test_unknown_key_in_mapping_is_refused():
    with pytest.raises(ConfigError) as err:
        PolicyConfig.from_mapping({"max_age_hour": 3})
    assert err.value.key == "max_age_hour"
    assert PolicyConfig.from_mapping({"max_age_hours": 4}).max_age_hours == 4


def test_config_is_frozen():
    with pytest.raises(Exception):
        CFG.max_age_hours = D(1)  # type: ignore[misc]


# --- properties -----------------------------------------------------------------------

prices = st.decimals(min_value=D("0.00000001"), max_value=D("1000000"), places=8, allow_nan=False)
ages = st.integers(min_value=0, max_value=200 * 3_600_000_000)  # microseconds
configs = st.builds(
    PolicyConfig,
    max_age_hours=st.decimals(0, 48, places=2),
    grace_period_hours=st.decimals(0, 48, places=2),
    loss_step_percent=st.decimals("0.01", 5, places=2),
    acceleration_after_hours=st.decimals(0, 48, places=2),
    acceleration_factor=st.decimals(1, 3, places=2),
    max_loss_percent=st.decimals(5, 50, places=2),
    commission_percent=st.decimals(0, "0.5", places=3),
)


def _at_us(us: int) -> datetime:
    return T0 + timedelta(microseconds=us)


@settings(max_examples=300)
@given(configs, prices, ages, ages, st.sampled_from(["long", "short"]))
def test_tolerance_never_decreases_and_never_exceeds_cap(cfg, entry, a1, a2, side):
    early, late = sorted((a1, a2))
    x = assess(side, entry, T0, _at_us(early), cfg)
    y = assess(side, entry, T0, _at_us(late), cfg)
    assert x.loss_tolerance_percent <= y.loss_tolerance_percent <= cfg.max_loss_percent
    order = [Phase.NOT_AGED, Phase.GRACE, Phase.PROGRESSIVE]
    assert order.index(x.phase) <= order.index(y.phase)


@settings(max_examples=300)
@given(configs, prices, ages)
def test_target_never_beyond_breakeven_and_mirrors(cfg, entry, age):
    lo = assess("long", entry, T0, _at_us(age), cfg)
    sh = assess("short", entry, T0, _at_us(age), cfg)
    assert lo.phase == sh.phase
    assert lo.loss_tolerance_percent == sh.loss_tolerance_percent
    if lo.target_price is None:
        assert sh.target_price is None
        return
    assert lo.target_price <= lo.breakeven_price
    assert sh.target_price >= sh.breakeven_price
    # mirror: long and short targets sit symmetrically around the entry price
    assert (lo.target_price + sh.target_price) == 2 * entry


@settings(max_examples=200)
@given(configs, prices, ages, prices)
def test_long_closes_at_or_above_target_only(cfg, entry, age, bid):
    a = assess("long", entry, T0, _at_us(age), cfg)
    if a.target_price is None:
        assert not should_close(a, "long", bid=bid)
    else:
        assert should_close(a, "long", bid=bid) == (bid >= a.target_price)
