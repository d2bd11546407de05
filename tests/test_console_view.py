"""The console's pure view of a position: the next step of the schedule and the row → JSON object.

Vectors from the specification's policy table (defaults, entry 100); Hypothesis checks
that a next step always lies ahead, that the policy itself agrees with its target, and
that the target never moves in the position's favour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from uuid import uuid4

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from actors.policy import Phase, PolicyConfig, Schedule
from service.console_view import Step, distance_percent, next_step, position_view

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CFG = PolicyConfig()


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def schedule(side: str = "long", entry: str = "100") -> Schedule:
    return Schedule.of(side, D(entry), T0, CFG)


def test_before_aging_the_next_step_is_the_aging_instant_at_breakeven():
    assert next_step(schedule(), h(2.5)) == Step(h(3), D("100.2"), Phase.GRACE, D(0))
    assert next_step(schedule("short"), h(1)) == Step(h(3), D("99.8"), Phase.GRACE, D(0))


def test_in_grace_the_next_step_is_the_end_of_grace_at_the_entry_price():
    step = next_step(schedule(), h(5))
    assert step == Step(h(11), D(100), Phase.PROGRESSIVE, D(0))
    # the policy agrees: a moment after the end of grace the target is the entry (to 1e-9)
    just_after = schedule().assess(h(11) + timedelta(microseconds=1))
    assert just_after.phase is Phase.PROGRESSIVE and abs(just_after.target_price - D(100)) < D("1e-9")


@pytest.mark.parametrize(
    ("side", "age", "at", "target", "tolerance"),
    [
        ("long", 11.5, 12, "99.5", "0.5"),
        ("long", 12, 13, "99.0", "1.0"),  # exactly on a whole hour: the next one
        ("short", 20.25, 21, "105", "5.0"),
        ("long", 25.9, 26, "92", "8.0"),
        ("long", 28.5, 29, "90.2", "9.8"),
        ("long", 29.1, 30, "90", "10"),  # the cap comes before the next whole hour
    ],
)
def test_in_progressive_the_next_step_is_the_next_whole_hour(side, age, at, target, tolerance):
    step = next_step(schedule(side), h(age))
    assert step is not None
    assert (step.at, step.phase) == (h(at), Phase.PROGRESSIVE)
    assert step.target == D(target) and step.loss_tolerance_percent == D(tolerance)


def test_at_the_cap_or_without_a_step_there_is_no_next_step():
    assert next_step(schedule(), h(40)) is None
    flat = Schedule.of("long", D(100), T0, PolicyConfig(loss_step_percent=0, max_loss_percent=0))
    assert next_step(flat, h(20)) is None


@given(
    side=st.sampled_from(["long", "short"]),
    entry=st.decimals(min_value=D("0.0001"), max_value=D("100000"), places=4),
    minutes=st.integers(min_value=0, max_value=40 * 60),
)
@example(side="long", entry=D("1"), minutes=180)  # the instant the position ages
def test_a_next_step_lies_ahead_and_never_moves_the_target_in_the_positions_favour(side, entry, minutes):
    s = Schedule.of(side, entry, T0, CFG)
    now = T0 + timedelta(minutes=minutes)
    step = next_step(s, now)
    now_target = s.assess(now).target_price
    if step is None:
        assert s.assess(now).at_cap
        return
    # A phase change is due the instant after its boundary (the policy's ages are "older
    # than"): exactly on the boundary the next step is that instant itself.
    on_boundary = s.assess(now + timedelta(microseconds=1)).phase is not s.assess(now).phase
    assert step.at > now or (step.at == now and on_boundary)
    if step.phase is Phase.PROGRESSIVE and now_target is not None and s.assess(now).phase is Phase.PROGRESSIVE:
        assert s.assess(step.at).target_price == step.target
    if now_target is not None:
        assert (step.target <= now_target) if side == "long" else (step.target >= now_target)


def row(**changes) -> dict:
    base = {
        "id": uuid4(), "position_id": 7, "exchange": "bybit", "symbol": "BTC/USDT:USDT", "side": "long",
        "quantity": D("0.5"), "entry_price": D(100), "episode_quantity": D("0.8"), "episode_entry_price": D(100),
        "position_opened_at": T0, "detected_at": h(3), "status": "progressive_active",
        "last_checked_price": D("98"), "last_price_check": h(11.9), "close_attempts": 0,
        "last_error_message": None,
    }
    return base | changes


def test_position_view_uses_the_feed_quote_and_the_episode_size():
    view = position_view(row(), h(12), CFG, bid=D("99"), ask=D("99.1"), quote_at=h(12))
    assert view["quantity"] == D("0.8") and view["phase"] == "progressive"
    assert (view["price"], view["price_source"], view["price_at"]) == (D(99), "feed", h(12))
    assert view["target_price"] == D("99.5") and view["loss_tolerance_percent"] == D("0.5")
    assert view["distance_percent"] == distance_percent("long", D(99), D("99.5")) > 0
    assert view["next_step_at"] == h(13) and view["next_target_price"] == D("99.0")
    assert view["age_hours"] == 12 and view["held"] is False and view["hold_until"] is None


def test_position_view_falls_back_to_the_sampled_price_and_shows_a_hold():
    view = position_view(row(side="short", hold_until=h(14), hold_reason="news"), h(12), CFG)
    assert (view["price"], view["price_source"], view["price_at"]) == (D(98), "sampled", h(11.9))
    assert view["target_price"] == D("100.5") and view["distance_percent"] < 0  # reached
    assert view["held"] is True and view["hold_reason"] == "news"
    expired = position_view(row(hold_until=h(11)), h(12), CFG)
    assert expired["held"] is False
    none = position_view(row(last_checked_price=None, last_price_check=None), h(12), CFG)
    assert none["price"] is None and none["price_source"] is None and none["distance_percent"] is None


def test_position_view_follows_the_policy_in_force():
    strict = PolicyConfig(grace_period_hours=20)
    assert position_view(row(), h(12), strict)["phase"] == "grace"
    assert position_view(row(), h(12), CFG)["phase"] == "progressive"
