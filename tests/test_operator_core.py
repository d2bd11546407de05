"""Operator actions, pure: their checks (one clear error naming the field) and the
per-symbol policy they make. The position machine's handling of holds, releases,
force-closes and overrides is further down.

Rules: no I/O, no clock; Hypothesis where a property fits.
"""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given
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
from service.config import SETTINGS

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
