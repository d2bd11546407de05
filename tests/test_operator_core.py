"""Operator actions, pure: their checks (one clear error naming the field) and the
per-symbol policy they make. The position machine's handling of holds, releases,
force-closes and overrides is further down.

Rules: no I/O, no clock; Hypothesis where a property fits.
"""

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from actors.operator import (
    OVERRIDABLE,
    BadAction,
    ClearOverride,
    ForceClose,
    Hold,
    Override,
    check_action,
    effective_policy,
    hold_for,
    parse_aged_id,
    parse_hold_hours,
    validate_override,
)
from actors.policy import PolicyConfig
from actors.position import (
    Answer,
    CloseResult,
    Emit,
    ForceCloseRequested,
    HoldReleased,
    HoldSet,
    Persist,
    PolicyChanged,
    PositionState,
    RequestClose,
    ScheduleTimer,
    Settings,
    Start,
    Tick,
    Timer,
    step,
)
from service.config import SETTINGS
from storage.mapping import position_state

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value,hours", [("4", D(4)), (0.5, D("0.5")), (720, D(720)), (" 1.25 ", D("1.25"))])
def test_hold_hours_in_range_are_accepted(value, hours):
    assert parse_hold_hours(value) == hours


@pytest.mark.parametrize("value", ["0", -1, "720.001", "abc", "NaN", "Infinity", True, None, [], ""])
def test_hold_hours_out_of_range_or_not_numbers_are_refused_naming_hours(value):
    with pytest.raises(BadAction, match=r"^hours: "):
        parse_hold_hours(value)


def test_hold_for_adds_the_hours_to_now_and_checks_everything():
    aged = uuid.uuid4()
    assert hold_for(str(aged), "2.5", "news at 14:00", NOW) == Hold(aged, NOW + timedelta(hours=2.5), "news at 14:00")
    with pytest.raises(BadAction, match="aged position id"):
        hold_for("nope", 1, "x", NOW)
    with pytest.raises(BadAction, match="reason"):
        hold_for(aged, 1, "  ", NOW)
    with pytest.raises(BadAction, match="reason"):
        hold_for(aged, 1, "two\nlines", NOW)
    with pytest.raises(BadAction, match="now"):
        hold_for(aged, 1, "x", NOW.replace(tzinfo=None))


def test_ids_and_names_are_checked():
    assert parse_aged_id(str(uuid.UUID(int=7))) == uuid.UUID(int=7)
    with pytest.raises(BadAction, match="not a UUID"):
        check_action(ForceClose("123"))  # type: ignore[arg-type]
    with pytest.raises(BadAction, match="exchange"):
        check_action(ClearOverride("by bit", "BTC/USDT:USDT"))
    with pytest.raises(BadAction, match="reason"):
        check_action(ForceClose(uuid.uuid4(), "x" * 501))
    with pytest.raises(BadAction, match="action"):
        check_action("close")


def test_override_settings_use_the_config_files_ranges():
    policy = {s.key: s for s in SETTINGS["policy"]}
    base = PolicyConfig()
    assert validate_override({"max_loss_percent": "12.5", "grace_period_hours": 2}, base) == {
        "max_loss_percent": D("12.5"), "grace_period_hours": D(2)}
    for key in OVERRIDABLE:
        top = policy[key].max
        assert policy[key].max is not None
        with pytest.raises(BadAction, match=f"^{key}: .*out of range"):
            validate_override({key: top + 1}, base)


@pytest.mark.parametrize("settings,field", [
    ({}, "settings"),
    ({"max_age_hours": 5}, "max_age_hours"),
    ({"bogus": 1}, "bogus"),
    ({"max_loss_percent": "lots"}, "max_loss_percent"),
    ({"max_loss_percent": True}, "max_loss_percent"),
    ({"max_loss_percent": 0}, "max_loss_percent"),
    ({"loss_step_percent": 11}, "max_loss_percent"),  # above the base's cap of 10
    ({"acceleration_factor": "0.5"}, "acceleration_factor"),
])
def test_bad_override_settings_are_refused_naming_the_field(settings, field):
    with pytest.raises(BadAction, match=field):
        validate_override(settings, PolicyConfig())


def test_effective_policy_layers_overrides_the_last_winning():
    base = PolicyConfig()
    config_layer = {"max_loss_percent": D(12), "grace_period_hours": D(4)}
    db_layer = {"max_loss_percent": D(15)}
    p = effective_policy(base, config_layer, db_layer)
    assert (p.max_loss_percent, p.grace_period_hours, p.loss_step_percent) == (D(15), D(4), base.loss_step_percent)
    assert effective_policy(base) is base
    with pytest.raises(BadAction, match="max_loss_percent"):
        effective_policy(base, {"max_loss_percent": D("0.1")})


@given(st.decimals(min_value=D("0.001"), max_value=D("99.999"), places=3))
def test_any_max_loss_in_range_above_the_step_is_accepted_as_given(value):
    base = PolicyConfig()
    if value < base.loss_step_percent:
        with pytest.raises(BadAction, match="max_loss_percent"):
            validate_override({"max_loss_percent": str(value)}, base)
    else:
        assert validate_override({"max_loss_percent": str(value)}, base) == {"max_loss_percent": value}
        assert effective_policy(base, {"max_loss_percent": value}).max_loss_percent == value


def test_actions_are_plain_frozen_values_with_a_name():
    aged = uuid.uuid4()
    assert {Hold(aged, NOW, "r").name, ForceClose(aged).name, Override("bybit", "X/Y:Y").name} == {
        "hold", "close", "override"}
    with pytest.raises(AttributeError):
        ForceClose(aged).reason = "changed"  # type: ignore[misc]


# --- the position machine: hold, release, close now, a new policy ----------------------


T0 = NOW


def h(hours) -> datetime:
    return T0 + timedelta(hours=hours)


def new_state(side="long", **kw) -> PositionState:
    return PositionState(aged_id=uuid.uuid4(), position_id=1, exchange="bybit", symbol="BTC/USDT:USDT", side=side,
                         entry_price=D(100), quantity=D(2), opened_at=T0, config=PolicyConfig(), **kw)


def of(kind, cmds):
    return [c for c in cmds if isinstance(c, kind)]


def answer(cmds) -> str:
    [a] = of(Answer, cmds)
    return a.outcome


def started(at=5, **kw):
    s, _ = step(new_state(**kw), Start(h(at)))
    return s


def test_a_held_position_does_not_close_at_its_target_and_closes_when_the_hold_ends():
    s = started()
    s, cmds = step(s, HoldSet(h(5), until=h(7), reason="news"))
    assert answer(cmds) == f"held until {h(7).isoformat()}"
    assert ScheduleTimer(h(7), "hold") in cmds
    assert [e.event_type for e in of(Emit, cmds)] == ["operator.hold"]
    s, cmds = step(s, Tick(h(6), bid=D(101)))  # above breakeven 100.2: would close
    assert not of(RequestClose, cmds) and not s.close_in_flight
    s, cmds = step(s, Timer(h(7), "hold", bid=D(101)))  # the hold ends, the price still good
    [req] = of(RequestClose, cmds)
    assert not req.emergency and req.worst_price == D("100.2")


def test_release_closes_at_once_on_the_quote_it_carries():
    s = started()
    s, _ = step(s, HoldSet(h(5), until=h(9), reason="news"))
    s, cmds = step(s, Tick(h(6), bid=D(101)))
    assert not of(RequestClose, cmds)
    s, cmds = step(s, HoldReleased(h(6.5), bid=D(101)))
    assert answer(cmds) == "released"
    assert s.hold_until is None and len(of(RequestClose, cmds)) == 1
    s2, cmds = step(started(), HoldReleased(h(6.5)))
    assert answer(cmds) == "released (was not held)" and not of(RequestClose, cmds)


def test_the_emergency_rule_closes_a_held_position():
    s = started(settings=Settings(emergency_close_after_hours=D(20)))
    s, _ = step(s, HoldSet(h(5), until=h(100), reason="long hold"))
    s, cmds = step(s, Tick(h(19), bid=D(120)))
    assert not of(RequestClose, cmds)
    s, cmds = step(s, Tick(h(20), bid=D(50)))
    [req] = of(RequestClose, cmds)
    assert req.emergency


def test_force_close_sends_a_market_close_once_and_closes_as_manual():
    s = started()
    s, cmds = step(s, ForceCloseRequested(h(6), "operator exit"))
    assert answer(cmds) == "close sent"
    [req] = of(RequestClose, cmds)
    assert (req.qty, req.next_attempt, req.emergency, req.worst_price) == (D(2), 1, True, None)
    [p] = of(Persist, cmds)
    assert p.fields["close_triggered_at"] == h(6)
    s, cmds = step(s, ForceCloseRequested(h(6.01)))
    assert answer(cmds) == "already closing" and not of(RequestClose, cmds)
    s, cmds = step(s, CloseResult(h(6.02), "flat", filled_qty=D(2), avg_price=D(105), remaining_qty=D(0), attempts=1))
    closing = [c for c in of(Persist, cmds) if "status" in c.fields]
    assert closing[0].fields["close_reason"] == "manual" and closing[0].fields["close_price"] == D(105)
    s, cmds = step(s, ForceCloseRequested(h(7)))
    assert answer(cmds) == "not active (closed)" and not of(RequestClose, cmds)


def test_force_close_of_a_held_position_or_one_in_error_still_closes():
    held, _ = step(started(), HoldSet(h(5), until=h(50), reason="x"))
    _, cmds = step(held, ForceCloseRequested(h(6)))
    assert len(of(RequestClose, cmds)) == 1
    s = started()
    s, _ = step(s, Tick(h(6), bid=D(101)))
    s, _ = step(s, CloseResult(h(6.1), "failed", attempts=3, error="boom"))
    assert s.status == "error"
    s, cmds = step(s, ForceCloseRequested(h(6.2)))
    assert s.status == "grace_active" and len(of(RequestClose, cmds)) == 1


def test_a_failed_force_close_goes_back_to_the_policy():
    s, _ = step(started(), ForceCloseRequested(h(6)))
    s, _ = step(s, CloseResult(h(6.1), "failed", attempts=3, error="boom"))
    assert s.status == "error" and not s.manual_close


def test_a_new_policy_moves_the_target_and_can_close_at_once():
    s = started(at=12)  # progressive: tolerance 0.5 %, target 99.5
    s, cmds = step(s, Tick(h(12), bid=D(98)))
    assert not of(RequestClose, cmds)
    wider = replace(PolicyConfig(), loss_step_percent=D(3))  # tolerance 3 %: target 97
    s, cmds = step(s, PolicyChanged(h(12), wider, bid=D(98)))
    assert answer(cmds) == "policy applied (target 97)"
    assert {c.fields["target_price"] for c in of(Persist, cmds) if "target_price" in c.fields} == {D(97)}
    assert len(of(RequestClose, cmds)) == 1
    _, cmds = step(s, PolicyChanged(h(12), wider))
    assert answer(cmds) == "unchanged"


def test_a_longer_grace_period_takes_a_progressive_position_back_to_grace():
    s = started(at=12)
    assert s.status == "progressive_active"
    s, cmds = step(s, PolicyChanged(h(12), replace(PolicyConfig(), grace_period_hours=D(20))))
    assert s.status == "grace_active"
    s, cmds = step(s, Tick(h(13), bid=D(99.9)))  # below breakeven: no close in grace
    assert not of(RequestClose, cmds)


def test_a_hold_survives_a_restart_through_the_row():
    s = started()
    row = {"id": s.aged_id, "position_id": 1, "exchange": "bybit", "symbol": "BTC/USDT:USDT", "side": "long",
           "entry_price": D(100), "quantity": D(2), "position_opened_at": T0, "status": "grace_active",
           "closed_qty": D(0), "close_attempts": 0, "close_triggered_at": None, "last_price_check": None,
           "last_checked_price": None, "hold_until": h(8), "hold_reason": "news"}
    loaded = position_state(row, PolicyConfig(), Settings(), inflight_orders=False)
    assert (loaded.hold_until, loaded.hold_reason) == (h(8), "news")
    loaded, cmds = step(loaded, Start(h(6)))
    assert ScheduleTimer(h(8), "hold") in cmds
    _, cmds = step(loaded, Tick(h(6), bid=D(101)))
    assert not of(RequestClose, cmds)


_events = st.lists(
    st.tuples(st.sampled_from(["tick", "timer"]), st.integers(0, 300), st.decimals(80, 120, places=2)), max_size=25)


def _run(s, events, now):
    """Apply ``events`` from ``now``; the new state, every command, and the time reached."""
    out = []
    for kind, minutes, price in events:
        now += timedelta(minutes=minutes)
        event = Tick(now, bid=price, ask=price + D("0.01"), last=price) if kind == "tick" else Timer(now)
        s, cmds = step(s, event)
        out.extend(cmds)
    return s, out, now


@hsettings(max_examples=300)
@given(start_h=st.floats(0, 45, allow_nan=False), side=st.sampled_from(["long", "short"]), events=_events)
def test_a_hold_never_closes_except_by_the_emergency_rule(start_h, side, events):
    s = started(at=start_h, side=side, settings=Settings(emergency_close_after_hours=D(60)))
    s, _ = step(s, HoldSet(h(start_h), until=h(start_h + 1000), reason="hold"))
    s, cmds, _ = _run(s, events, h(start_h))
    assert all(r.emergency for r in of(RequestClose, cmds))
    assert s.close_in_flight == bool(of(RequestClose, cmds))


@hsettings(max_examples=300)
@given(start_h=st.floats(0, 45, allow_nan=False), side=st.sampled_from(["long", "short"]),
       during=_events, after=_events)
def test_after_a_release_a_position_behaves_as_if_never_held(start_h, side, during, after):
    plain = started(at=start_h, side=side)
    held, _ = step(plain, HoldSet(h(start_h), until=h(start_h + 1000), reason="hold"))
    plain, plain_cmds, now = _run(plain, during, h(start_h))
    held, _, _ = _run(held, during, h(start_h))
    if of(RequestClose, plain_cmds):
        return  # the hold changed what happened; nothing to compare
    held, _ = step(held, HoldReleased(now))
    assert held == plain
    plain, plain_cmds, _ = _run(plain, after, now)
    held, held_cmds, _ = _run(held, after, now)
    assert held == plain and held_cmds == plain_cmds
