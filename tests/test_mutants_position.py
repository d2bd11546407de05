"""Position-machine promises pinned down by mutation testing (``make mutate``).

Each scenario checks the *whole* list of commands ``step`` returns: the row fields it
persists (the columns of monitoring.aged_positions), the events it emits and what it
asks the executor for. The policy's own functions are the oracle for prices and pnl.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from uuid import uuid4

import pytest

from actors.policy import PolicyConfig, assess, close_reason, realised_pnl
from actors.position import (
    CloseResult, Emit, Persist, PositionState, RequestClose, ScheduleTimer, Start, Stop, Tick, step,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
CFG = PolicyConfig()
COOLDOWN = timedelta(seconds=300)  # the default error_cooldown: the documented configuration default


def h(hours) -> datetime:
    return T0 + timedelta(hours=hours)


def new_state(side="long", qty=D(2), **kw) -> PositionState:
    return PositionState(aged_id=uuid4(), position_id=1, exchange="bybit", symbol="BTC/USDT:USDT", side=side,
                         entry_price=D(100), quantity=qty, opened_at=T0, config=CFG, **kw)


def progressive(side="long", at=12):
    s, _ = step(new_state(side), Start(h(at)))
    assert s.status == "progressive_active"
    return s


def triggered(**tick):
    s = progressive()
    s, cmds = step(s, Tick(h(12), **tick))
    assert s.close_in_flight
    return s, cmds


def test_a_tick_at_the_target_samples_then_triggers_the_close():
    a = assess("long", D(100), T0, h(12), CFG)  # target 99.5, tolerance 0.5
    s, cmds = triggered(bid=D("99.6"), ask=D("99.7"), last=D("99.65"))
    distance = (a.target_price - D("99.6")) / a.target_price * 100
    assert cmds == [
        Persist(**{"sampled_price": D("99.6"), "sampled_at": h(12), "target_price": a.target_price,
                 "loss_tolerance_percent": a.loss_tolerance_percent,
                 "hours_aged": D(12), "hours_in_grace": D(8), "hours_in_progressive": D(1)}),
        Emit("price_check", market_price=D("99.6"), target_price=a.target_price, distance_percent=distance),
        Persist(**{"close_triggered_at": h(12), "target_price": a.target_price,
                 "loss_tolerance_percent": a.loss_tolerance_percent, "sampled_price": D("99.6"),
                 "sampled_at": h(12)}),
        Emit("aged.close.triggered", market_price=D("99.6"), target_price=a.target_price,
             data={"phase": "progressive", "loss_tolerance_percent": str(a.loss_tolerance_percent),
                   "bid": "99.6", "ask": "99.7", "emergency": False}),
        RequestClose(D(2), 1, emergency=False, worst_price=a.target_price),
    ]
    assert s.last_price == D("99.6") and s.close_triggered_at == h(12)
    assert s.last_sample_at == h(12) and s.last_sample_distance == distance


def test_the_last_price_alone_can_trigger_a_close():
    a = assess("long", D(100), T0, h(12), CFG)
    s, cmds = triggered(last=D("99.6"))
    [close] = [c for c in cmds if isinstance(c, RequestClose)]
    assert close == RequestClose(D(2), 1, emergency=False, worst_price=a.target_price)
    [trig] = [c for c in cmds if isinstance(c, Emit) and c.event_type == "aged.close.triggered"]
    assert trig.market_price == D("99.6") and trig.data["bid"] is None and trig.data["ask"] is None
    assert s.last_price == D("99.6")


def test_a_short_triggers_on_the_ask():
    a = assess("short", D(100), T0, h(12), CFG)  # target 100.5
    s = progressive("short")
    s, cmds = step(s, Tick(h(12), bid=D("100.3"), ask=D("100.4")))
    assert cmds[-1] == RequestClose(D(2), 1, emergency=False, worst_price=a.target_price)
    assert s.last_price == D("100.4")


def test_a_full_fill_closes_with_the_realised_pnl():
    s, _ = triggered(bid=D("99.6"))
    a = assess("long", D(100), T0, h(12), CFG)
    now = h(12) + timedelta(seconds=2)
    s, cmds = step(s, CloseResult(now, "flat", filled_qty=D(2), avg_price=D("99.6"), remaining_qty=D(0),
                                  attempts=1, last_order_id="o1"))
    pnl, pct = realised_pnl("long", D(100), D("99.6"), D(2), CFG)
    reason = close_reason("long", D(100), D("99.6"), a, CFG).value
    assert reason == "loss_acceptable"
    assert cmds == [
        Persist(**{"status": "closed", "closed_at": now, "close_reason": reason, "closed_qty": D(2),
                 "quantity": D(0), "close_attempts": 1, "close_price": D("99.6"), "pnl": pnl,
                 "pnl_percent": pct, "close_order_id": "o1", "phase_at_close": "progressive"}),
        Emit("aged.close.completed", market_price=D("99.6"), success=True,
             data={"close_reason": reason, "filled_qty": "2", "attempts": 1, "pnl_percent": str(pct)}),
        Stop(),
    ]
    assert (s.status, s.quantity, s.closed_qty, s.close_attempts, s.close_in_flight) == \
        ("closed", D(0), D(2), 1, False)


def test_a_partial_fill_leaves_the_rest_open():
    s, _ = triggered(bid=D("99.6"))
    now = h(12) + timedelta(seconds=2)
    s, cmds = step(s, CloseResult(now, "open", filled_qty=D("0.5"), avg_price=D("99.6"), remaining_qty=D("1.5"),
                                  attempts=1))
    assert cmds == [Persist(**{"close_attempts": 1, "quantity": D("1.5"), "closed_qty": D("0.5")})]
    assert (s.status, s.quantity, s.closed_qty, s.close_in_flight) == ("progressive_active", D("1.5"), D("0.5"),
                                                                       False)


def test_a_failed_close_goes_to_error_and_retries_after_the_cooldown():
    s, _ = triggered(bid=D("99.6"))
    now = h(12) + timedelta(seconds=2)
    until = now + COOLDOWN
    s, cmds = step(s, CloseResult(now, "failed", attempts=3, error="boom"))
    assert cmds == [
        Persist(**{"status": "error", "last_error": "boom", "last_close_attempt_at": now, "close_attempts": 3,
                 "quantity": D(2), "closed_qty": D(0)}),
        Emit("aged.close.failed", success=False, error="boom", critical=True,
             data={"attempts": 3, "retry_after": until.isoformat()}),
        ScheduleTimer(until, "cooldown"),
    ]
    assert (s.status, s.error_until, s.close_attempts, s.close_in_flight) == ("error", until, 3, False)


def test_dust_stops_the_actor_with_what_is_left():
    s, _ = triggered(bid=D("99.6"))
    now = h(12) + timedelta(seconds=2)
    s, cmds = step(s, CloseResult(now, "dust", filled_qty=D("1.99"), avg_price=D("99.6"), remaining_qty=D("0.01"),
                                  attempts=2, error="below min"))
    assert cmds == [
        Persist(**{"status": "dust", "quantity": D("0.01"), "closed_qty": D("1.99"), "close_attempts": 2,
                 "last_error": "below min", "last_close_attempt_at": now}),
        Emit("aged.close.dust", success=False, error="below min", critical=True,
             data={"remaining_qty": "0.01", "filled_qty": "1.99", "attempts": 2}),
        Stop(),
    ]
    assert (s.status, s.quantity, s.closed_qty, s.close_attempts, s.close_in_flight) == \
        ("dust", D("0.01"), D("1.99"), 2, False)


def test_dust_without_a_reported_remainder_keeps_what_was_not_filled():
    s, _ = triggered(bid=D("99.6"))
    s, cmds = step(s, CloseResult(h(12.01), "dust", filled_qty=D("1.5"), attempts=1))
    assert s.status == "dust" and s.quantity == D("0.5") and s.closed_qty == D("1.5")


# --- phase changes ---------------------------------------------------------------------------

def test_entering_grace_persists_the_phase_and_times_the_next_change():
    s, cmds = step(new_state(), Start(h(3.5)))
    assert cmds == [
        Persist(**{"status": "grace_active", "target_price": D("100.2"), "loss_tolerance_percent": D(0),
                 "hours_aged": D("3.5"), "hours_in_grace": D("0.5"), "hours_in_progressive": D(0),
                 "grace_started_at": h(3)}),
        Emit("aged.phase.changed", target_price=D("100.2"),
             data={"from": "detected", "to": "grace_active", "phase": "grace", "loss_tolerance_percent": "0"}),
        ScheduleTimer(h(11) + timedelta(microseconds=1), "phase"),
    ]


def test_a_late_start_goes_straight_to_progressive_with_its_hours():
    a = assess("long", D(100), T0, h(12), CFG)
    s, cmds = step(new_state(), Start(h(12)))
    assert cmds == [
        Persist(**{"status": "progressive_active", "target_price": a.target_price,
                 "loss_tolerance_percent": a.loss_tolerance_percent,
                 "hours_aged": D(12), "hours_in_grace": D(8), "hours_in_progressive": D(1),
                 "grace_started_at": h(3), "progressive_started_at": h(11)}),
        Emit("aged.phase.changed", target_price=a.target_price,
             data={"from": "detected", "to": "progressive_active", "phase": "progressive",
                   "loss_tolerance_percent": str(a.loss_tolerance_percent)}),
    ]


# --- outcomes other than our own full fill ---------------------------------------------------------

def test_a_position_gone_before_any_fill_of_ours_is_a_manual_close():
    s, _ = triggered(bid=D("99.6"))
    now = h(12.01)
    s, cmds = step(s, CloseResult(now, "vanished", attempts=1))
    assert cmds == [
        Persist(**{"status": "closed", "closed_at": now, "close_reason": "manual", "closed_qty": D(0),
                 "quantity": D(0), "close_attempts": 1}),
        Emit("aged.close.completed", market_price=None, success=True,
             data={"close_reason": "manual", "filled_qty": "0", "attempts": 1, "pnl_percent": "None"}),
        Stop(),
    ]
    assert s.status == "closed" and not s.close_in_flight and not s.needs_reconcile


def test_a_close_finished_by_someone_else_records_our_part():
    s, _ = triggered(bid=D("99.6"))
    now = h(12.01)
    s, cmds = step(s, CloseResult(now, "vanished", filled_qty=D("0.5"), avg_price=D("99.6"), attempts=2,
                                  last_order_id="o2"))
    pnl, pct = realised_pnl("long", D(100), D("99.6"), D("0.5"), CFG)
    assert cmds[0] == Persist(**{"status": "closed", "closed_at": now, "close_reason": "manual",
                               "closed_qty": D("0.5"), "quantity": D(0), "close_attempts": 2,
                               "close_price": D("99.6"), "pnl": pnl, "pnl_percent": pct,
                               "close_order_id": "o2", "phase_at_close": "progressive"})
    assert s.closed_qty == D("0.5") and s.close_attempts == 2


def test_flat_with_nothing_filled_by_us_is_a_manual_close():
    s, _ = triggered(bid=D("99.6"))
    s, cmds = step(s, CloseResult(h(12.01), "flat", attempts=1))
    assert cmds[0].fields["close_reason"] == "manual" and "close_price" not in cmds[0].fields
    assert s.status == "closed"


def test_the_episode_ending_during_our_close_closes_it_as_manual():
    from actors.position import PositionVanished
    s, _ = triggered(bid=D("99.6"))
    s, cmds = step(s, PositionVanished(h(12.005)))
    assert cmds == [] and s.status == "progressive_active"
    s, cmds = step(s, CloseResult(h(12.01), "open", filled_qty=D("0.5"), avg_price=D("99.6"), attempts=1,
                                  last_order_id="o1"))
    assert s.status == "closed"
    assert cmds[0].fields["close_reason"] == "manual" and cmds[0].fields["closed_qty"] == D("0.5")
    assert cmds[0].fields["close_price"] == D("99.6") and cmds[0].fields["close_order_id"] == "o1"


# --- the close is judged at the moment it was triggered ---------------------------------------------

def test_phase_and_reason_are_those_of_the_trigger_not_of_the_result():
    s, _ = step(new_state(), Start(h(10)))
    s, cmds = step(s, Tick(h(10), bid=D("100.3")))  # grace: at or above breakeven 100.2
    assert s.close_in_flight
    s, cmds = step(s, CloseResult(h(12), "flat", filled_qty=D(2), avg_price=D("100.3"), attempts=1))
    assert cmds[0].fields["phase_at_close"] == "grace"

    # a loss: triggered before the cap, filled after it -> loss_acceptable, not max_loss
    s, _ = step(new_state(), Start(h(29)))
    a = assess("long", D(100), T0, h(29), CFG)
    assert not a.at_cap and assess("long", D(100), T0, h(31), CFG).at_cap
    s, cmds = step(s, Tick(h(29), bid=a.target_price))
    assert s.close_in_flight
    s, cmds = step(s, CloseResult(h(31), "flat", filled_qty=D(2), avg_price=a.target_price, attempts=1))
    assert cmds[0].fields["close_reason"] == "loss_acceptable"


def test_a_fill_before_the_position_aged_has_no_phase():
    s = new_state(close_in_flight=True, needs_reconcile=True)
    s, cmds = step(s, CloseResult(h(1), "vanished", filled_qty=D(2), avg_price=D(101), attempts=1))
    assert cmds[0].fields["phase_at_close"] is None and cmds[0].fields["close_price"] == D(101)
    assert not s.needs_reconcile


# --- when a close is asked for ----------------------------------------------------------------

def test_nothing_left_is_never_closed():
    s, _ = step(new_state(qty=D(0)), Start(h(12)))
    s, cmds = step(s, Tick(h(12), bid=D(100)))
    assert not any(isinstance(c, RequestClose) for c in cmds) and not s.close_in_flight


def test_an_emergency_close_may_come_before_the_position_ages():
    from actors.position import Settings
    s, _ = step(new_state(settings=Settings(emergency_close_after_hours=D(2))), Start(h(2.5)))
    s, cmds = step(s, Tick(h(2.5), bid=D(50)))
    assert cmds[-1] == RequestClose(D(2), 1, emergency=True, worst_price=None)


def test_an_emergency_timer_closes_at_the_last_sampled_price():
    from actors.position import Settings, Timer
    s, _ = step(new_state(settings=Settings(emergency_close_after_hours=D(20))), Start(h(12)))
    s, cmds = step(s, Tick(h(12), bid=D(90)))  # far below the target: sampled, no close
    assert not s.close_in_flight and s.last_price == D(90)
    s, cmds = step(s, Timer(h(20)))
    assert cmds[-1] == RequestClose(D(2), 1, emergency=True, worst_price=None)
    [trig] = [c for c in cmds if isinstance(c, Emit) and c.event_type == "aged.close.triggered"]
    assert trig.market_price == D(90) and trig.data["bid"] == "90" and trig.data["emergency"] is True


def test_a_close_between_samples_still_remembers_its_price():
    s = progressive()
    s, _ = step(s, Tick(h(12), bid=D("99.2")))
    s, cmds = step(s, Tick(h(12) + timedelta(seconds=10), bid=D("99.5")))
    assert not any(isinstance(c, Emit) and c.event_type == "price_check" for c in cmds)  # not a sample
    assert s.close_in_flight and s.last_price == D("99.5")


# --- error and cool-down ------------------------------------------------------------------------

def failed():
    s, _ = triggered(bid=D("99.6"))
    now = h(12.01)
    s, _ = step(s, CloseResult(now, "failed", attempts=3, error="boom"))
    return s, now + COOLDOWN


def test_a_tick_in_error_before_the_cooldown_neither_closes_nor_leaves_error():
    s, until = failed()
    s, cmds = step(s, Tick(until - timedelta(seconds=1), bid=D(100)))
    assert s.status == "error"
    assert not any(isinstance(c, (RequestClose, ScheduleTimer)) for c in cmds)


def test_a_tick_at_the_end_of_the_cooldown_leaves_error_and_closes():
    s, until = failed()
    s, cmds = step(s, Tick(until, bid=D(100)))
    assert cmds[0] == Persist(**{"status": "progressive_active", "last_error": None})
    assert s.error_until is None and s.close_in_flight
    assert cmds[-1] == RequestClose(D(2), 4, emergency=False, worst_price=assess("long", D(100), T0, until,
                                                                                     CFG).target_price)


def test_the_cooldown_timer_leaves_error_at_its_instant():
    from actors.position import Timer
    s, until = failed()
    s2, cmds = step(s, Timer(until - timedelta(microseconds=1), "cooldown"))
    assert s2.status == "error"
    s, cmds = step(s, Timer(until, "cooldown"))
    assert cmds[0] == Persist(**{"status": "progressive_active", "last_error": None})
    assert s.status == "progressive_active" and s.error_until is None


def test_a_tick_in_error_during_grace_sets_no_phase_timer():
    s, _ = step(new_state(), Start(h(10)))
    s, _ = step(s, Tick(h(10), bid=D("100.3")))
    s, _ = step(s, CloseResult(h(10.01), "failed", attempts=3, error="boom"))
    assert s.status == "error"
    s, cmds = step(s, Tick(h(10.01) + timedelta(seconds=30), bid=D("100.3")))
    assert s.status == "error"
    assert not any(isinstance(c, (RequestClose, ScheduleTimer)) for c in cmds)


# --- position updates -----------------------------------------------------------------------------

from actors.policy import breakeven_price  # noqa: E402
from actors.position import PositionUpdate, PositionVanished, QuietBand, Timer, quiet_band  # noqa: E402


def test_a_new_entry_price_moves_the_targets_at_once():
    s = progressive()
    s, _ = step(s, Tick(h(12), bid=D(90)))
    assert s.last_sample_distance is not None
    s, cmds = step(s, PositionUpdate(h(12.5), entry_price=D(101)))
    a = assess("long", D(101), T0, h(12.5), CFG)
    assert cmds == [
        Persist(**{"quantity": D(2), "entry_price": D(101), "target_price": a.target_price,
                 "breakeven_price": breakeven_price("long", D(101), CFG),
                 "loss_tolerance_percent": a.loss_tolerance_percent}),
        Emit("position.changed", target_price=a.target_price,
             data={"old_quantity": "2", "new_quantity": "2", "old_entry_price": "100", "new_entry_price": "101"}),
    ]
    assert s.entry_price == D(101) and s.last_sample_distance is None


def test_nonsense_sizes_and_prices_in_an_update_are_ignored_but_small_prices_are_not():
    s = progressive()
    s2, cmds = step(s, PositionUpdate(h(12.5), quantity=D(0), entry_price=D(0)))
    assert cmds == [] and (s2.quantity, s2.entry_price) == (D(2), D(100))
    s3, cmds = step(s, PositionUpdate(h(12.5), entry_price=D("0.5")))
    assert s3.entry_price == D("0.5") and cmds[0].fields["entry_price"] == D("0.5")


def test_a_trailing_stop_skips_even_an_errored_position_and_its_end_resumes_it():
    s, _ = step(new_state(), Start(h(5)))
    s, cmds = step(s, PositionUpdate(h(5.5), trailing_active=False))
    assert cmds == []  # not skipped: nothing to resume
    s, _ = step(s, Tick(h(5.5), bid=D("100.3")))
    s, _ = step(s, CloseResult(h(5.6), "failed", attempts=3, error="boom"))
    assert s.status == "error"
    s, cmds = step(s, PositionUpdate(h(5.7), trailing_active=True))
    assert cmds == [Persist(**{"status": "skipped"}), Emit("skipped", data={"reason": "trailing stop active"})]
    s, cmds = step(s, PositionUpdate(h(6), trailing_active=False))
    assert cmds == [Persist(**{"status": "grace_active"}),
                    Emit("resumed", data={"reason": "trailing stop no longer active"}),
                    ScheduleTimer(h(11) + timedelta(microseconds=1), "phase")]
    assert s.status == "grace_active"


def test_updates_during_a_close_are_merged_and_applied_after_it():
    s, _ = triggered(bid=D("99.6"))
    s, cmds = step(s, PositionUpdate(h(12.001), quantity=D(3)))
    s, cmds = step(s, PositionUpdate(h(12.002), entry_price=D(101)))
    assert cmds == [] and s.quantity == D(2)
    s, cmds = step(s, CloseResult(h(12.01), "open", attempts=1))
    assert (s.quantity, s.entry_price) == (D(3), D(101)) and s.pending_update is None


def test_a_position_gone_without_a_close_of_ours_is_closed_as_manual():
    s = progressive()
    s, cmds = step(s, PositionVanished(h(13)))
    assert cmds == [
        Persist(**{"status": "closed", "closed_at": h(13), "close_reason": "manual", "closed_qty": D(0),
                 "quantity": D(0), "close_attempts": 0}),
        Emit("aged.close.completed", market_price=None, success=True,
             data={"close_reason": "manual", "filled_qty": "0", "attempts": 0, "pnl_percent": "None"}),
        Stop(),
    ]


# --- (re)start ------------------------------------------------------------------------------------

def test_a_restart_with_a_close_maybe_in_flight_reconciles_first():
    s = new_state(needs_reconcile=True, close_attempts=2, status="grace_active")
    s, cmds = step(s, Start(h(5)))
    assert cmds == [RequestClose(D(2), 3, reconcile_only=True),
                    ScheduleTimer(h(11) + timedelta(microseconds=1), "phase")]
    assert s.close_in_flight


def test_a_finished_position_only_stops_on_start():
    for status in ("closed", "dust"):
        s, cmds = step(new_state(status=status), Start(h(5)))
        assert cmds == [Stop()]


def test_an_emergency_timer_closes_a_short_at_its_last_ask():
    from actors.position import Settings
    s, _ = step(new_state("short", settings=Settings(emergency_close_after_hours=D(20))), Start(h(12)))
    s, _ = step(s, Tick(h(12), bid=D(109), ask=D(110)))  # far above the target: sampled, no close
    assert not s.close_in_flight and s.last_price == D(110)
    s, cmds = step(s, Timer(h(20)))
    assert cmds[-1] == RequestClose(D(2), 1, emergency=True, worst_price=None)
    [trig] = [c for c in cmds if isinstance(c, Emit) and c.event_type == "aged.close.triggered"]
    assert trig.market_price == D(110) and trig.data["ask"] == "110" and trig.data["bid"] is None


def test_no_emergency_close_from_a_timer_without_a_known_price():
    from actors.position import Settings
    s, _ = step(new_state(settings=Settings(emergency_close_after_hours=D(20))), Start(h(12)))
    s, cmds = step(s, Timer(h(20)))
    assert not any(isinstance(c, RequestClose) for c in cmds) and not s.close_in_flight
    s, _ = step(new_state(settings=Settings(emergency_close_after_hours=D(20))), Start(h(12)))
    s, _ = step(s, Tick(h(12), bid=D(90)))
    s, cmds = step(s, Timer(h(19)))  # a price, but not yet old enough
    assert not any(isinstance(c, RequestClose) for c in cmds)


def test_a_restart_in_error_reconciles_and_sets_a_fresh_cooldown():
    s = new_state(status="error", needs_reconcile=True, close_attempts=3)
    now = h(12)
    s, cmds = step(s, Start(now))
    assert cmds == [RequestClose(D(2), 4, reconcile_only=True), ScheduleTimer(now + COOLDOWN, "cooldown")]
    assert s.error_until == now + COOLDOWN and s.close_in_flight
    # the reconcile fails too: still in error, the row says why
    later = now + timedelta(seconds=5)
    s, cmds = step(s, CloseResult(later, "failed", attempts=4, error="down"))
    assert cmds[0] == Persist(**{"last_error": "down", "last_close_attempt_at": later, "close_attempts": 4,
                               "quantity": D(2), "closed_qty": D(0)})
    assert s.status == "error" and not s.needs_reconcile and not s.close_in_flight


def test_results_clear_the_reconcile_flag():
    s, _ = step(new_state(needs_reconcile=True, status="progressive_active"), Start(h(12)))
    s2, _ = step(s, CloseResult(h(12.01), "open", attempts=1))
    assert s2.needs_reconcile is False and not s2.close_in_flight
    s3, _ = step(s, CloseResult(h(12.01), "dust", filled_qty=D(1), remaining_qty=D("0.001"), attempts=1))
    assert s3.needs_reconcile is False and s3.quantity == D("0.001")
    s4, _ = step(s, CloseResult(h(12.01), "flat", filled_qty=D(2), avg_price=D(99), attempts=1))
    assert s4.needs_reconcile is False and s4.status == "closed"


# --- updates that arrive during a close -----------------------------------------------------------

def test_updates_during_a_close_merge_field_by_field_the_later_one_winning():
    s, _ = triggered(bid=D("99.6"))
    s, _ = step(s, PositionUpdate(h(12.001), quantity=D(3), trailing_active=True, entry_price=D(101)))
    s, cmds = step(s, PositionUpdate(h(12.002), quantity=D(4)))
    assert cmds == []
    s, cmds = step(s, CloseResult(h(12.01), "open", attempts=1))
    assert (s.quantity, s.entry_price, s.status) == (D(4), D(101), "skipped")
    assert cmds[-1] == Emit("skipped", data={"reason": "trailing stop active"})


def test_a_trailing_stop_switched_on_and_off_during_a_close_leaves_the_position_watched():
    s, _ = triggered(bid=D("99.6"))
    s, _ = step(s, PositionUpdate(h(12.001), trailing_active=True))
    s, _ = step(s, PositionUpdate(h(12.002), trailing_active=False))
    s, cmds = step(s, CloseResult(h(12.01), "open", attempts=1))
    assert s.status == "progressive_active"
    assert cmds == [Persist(**{"close_attempts": 1, "quantity": D(2), "closed_qty": D(0)})]


# --- timers re-evaluate the quote they carry -------------------------------------------------------

def timer_close(side, at, price, bid=None, ask=None):
    """The commands of a timer at ``at`` whose quote reaches the target (progressive, no phase change)."""
    a = assess(side, D(100), T0, at, CFG)
    return [
        Persist(**{"close_triggered_at": at, "target_price": a.target_price,
                 "loss_tolerance_percent": a.loss_tolerance_percent, "sampled_price": price, "sampled_at": at}),
        Emit("aged.close.triggered", market_price=price, target_price=a.target_price,
             data={"phase": "progressive", "loss_tolerance_percent": str(a.loss_tolerance_percent),
                   "bid": None if bid is None else str(bid), "ask": None if ask is None else str(ask),
                   "emergency": False}),
        RequestClose(D(2), 1, emergency=False, worst_price=a.target_price),
    ]


def test_a_timer_closes_a_long_on_its_bid():
    at = h(12.5)
    bid = assess("long", D(100), T0, at, CFG).target_price
    s, cmds = step(progressive(), Timer(at, "target", bid=bid, ask=bid + 1))
    assert cmds == timer_close("long", at, bid, bid=bid, ask=bid + 1)
    assert s.close_in_flight and s.close_triggered_at == at and s.last_price == bid


def test_a_timer_closes_a_short_on_its_ask():
    at = h(12.5)
    ask = assess("short", D(100), T0, at, CFG).target_price
    s, cmds = step(progressive("short"), Timer(at, "target", bid=ask - 1, ask=ask))
    assert cmds == timer_close("short", at, ask, bid=ask - 1, ask=ask)
    assert s.last_price == ask


def test_a_timer_closes_on_the_last_price_when_the_book_side_is_unknown():
    at = h(12.5)
    last = assess("long", D(100), T0, at, CFG).target_price
    s, cmds = step(progressive(), Timer(at, "target", last=last))
    assert cmds == timer_close("long", at, last)
    last = assess("short", D(100), T0, at, CFG).target_price
    s, cmds = step(progressive("short"), Timer(at, "target", last=last))
    assert cmds == timer_close("short", at, last)


def test_a_phase_timer_moves_grace_to_progressive_and_closes_at_the_new_target():
    s, _ = step(new_state(), Start(h(10)))
    at = h(11) + timedelta(microseconds=1)
    a = assess("long", D(100), T0, at, CFG)
    s, cmds = step(s, Timer(at, "phase", bid=a.target_price))
    assert cmds[:2] == [
        Persist(**{"status": "progressive_active", "target_price": a.target_price,
                 "loss_tolerance_percent": a.loss_tolerance_percent,
                 "hours_aged": a.age_hours, "hours_in_grace": D(8),
                 "hours_in_progressive": a.hours_over - 8,
                 "grace_started_at": h(3), "progressive_started_at": h(11)}),
        Emit("aged.phase.changed", target_price=a.target_price,
             data={"from": "grace_active", "to": "progressive_active", "phase": "progressive",
                   "loss_tolerance_percent": str(a.loss_tolerance_percent)}),
    ]
    assert cmds[-1] == RequestClose(D(2), 1, emergency=False, worst_price=a.target_price)


def test_an_emergency_timer_records_when_it_triggered():
    from actors.position import Settings
    s, _ = step(new_state(settings=Settings(emergency_close_after_hours=D(20))), Start(h(12)))
    s, _ = step(s, Tick(h(12), bid=D(90)))
    s, cmds = step(s, Timer(h(20)))
    assert cmds[0].fields["close_triggered_at"] == h(20) and cmds[0].fields["sampled_at"] == h(20)
    assert s.close_triggered_at == h(20)


# --- quiet bands ------------------------------------------------------------------------------------

def test_a_band_excludes_its_bounds_and_judges_the_last_price_when_the_book_side_is_unknown():
    band = QuietBand(True, D(99), D(101), h(1))
    assert band.quiet_price(D(100), None, None)
    assert not band.quiet_price(D(99), None, None) and not band.quiet_price(D(101), None, None)
    assert not band.quiet_price(None, None, D(200)) and band.quiet_price(None, None, D(100))
    assert band.quiet_price(None, None, None)


# --- results with nothing of ours filled -------------------------------------------------------------

def test_a_flat_result_with_a_price_but_no_fill_of_ours_is_a_manual_close_at_no_price():
    s, _ = triggered(bid=D("99.6"))
    now = h(12.01)
    s, cmds = step(s, CloseResult(now, "flat", avg_price=D("99.6"), remaining_qty=D(0), attempts=1))
    assert cmds == [
        Persist(**{"status": "closed", "closed_at": now, "close_reason": "manual", "closed_qty": D(0),
                 "quantity": D(0), "close_attempts": 1}),
        Emit("aged.close.completed", market_price=None, success=True,
             data={"close_reason": "manual", "filled_qty": "0", "attempts": 1, "pnl_percent": "None"}),
        Stop(),
    ]


def test_the_episode_ending_during_a_close_that_filled_nothing_is_closed_at_no_price():
    s, _ = triggered(bid=D("99.6"))
    s, _ = step(s, PositionVanished(h(12.005)))
    now = h(12.01)
    s, cmds = step(s, CloseResult(now, "open", avg_price=D("99.6"), attempts=2))
    assert cmds == [
        Persist(**{"status": "closed", "closed_at": now, "close_reason": "manual", "closed_qty": D(0),
                 "quantity": D(0), "close_attempts": 2}),
        Emit("aged.close.completed", market_price=None, success=True,
             data={"close_reason": "manual", "filled_qty": "0", "attempts": 2, "pnl_percent": "None"}),
        Stop(),
    ]
    assert (s.status, s.close_attempts) == ("closed", 2)


def test_the_episode_ending_during_a_close_that_filled_part_records_when_and_how_often():
    s, _ = triggered(bid=D("99.6"))
    s, _ = step(s, PositionVanished(h(12.005)))
    now = h(12.01)
    s, cmds = step(s, CloseResult(now, "open", filled_qty=D("0.5"), avg_price=D("99.6"), attempts=2,
                                  last_order_id="o1"))
    pnl, pct = realised_pnl("long", D(100), D("99.6"), D("0.5"), CFG)
    assert cmds[0] == Persist(**{"status": "closed", "closed_at": now, "close_reason": "manual",
                               "closed_qty": D("0.5"), "quantity": D(0), "close_attempts": 2,
                               "close_price": D("99.6"), "pnl": pnl, "pnl_percent": pct,
                               "close_order_id": "o1", "phase_at_close": "progressive"})
    assert cmds[1] == Emit("aged.close.completed", market_price=D("99.6"), success=True,
                           data={"close_reason": "manual", "filled_qty": "0.5", "attempts": 2,
                                 "pnl_percent": str(pct)})


def test_a_vanished_result_records_when_and_how_often():
    s, _ = triggered(bid=D("99.6"))
    now = h(12.01)
    s, cmds = step(s, CloseResult(now, "vanished", filled_qty=D("0.5"), avg_price=D("99.6"), attempts=3))
    assert cmds[0].fields["closed_at"] == now and cmds[0].fields["close_attempts"] == 3
    assert cmds[1].market_price == D("99.6") and cmds[1].data["attempts"] == 3


def test_a_partial_fill_without_a_reported_remainder_leaves_what_was_not_filled():
    s, _ = triggered(bid=D("99.6"))
    s, cmds = step(s, CloseResult(h(12.01), "open", filled_qty=D("0.5"), avg_price=D("99.6"), attempts=1))
    assert cmds == [Persist(**{"close_attempts": 1, "quantity": D("1.5"), "closed_qty": D("0.5")})]
    assert s.quantity == D("1.5")


def test_a_close_drops_an_update_that_was_waiting_for_it():
    s, _ = triggered(bid=D("99.6"))
    s, _ = step(s, PositionUpdate(h(12.001), quantity=D(3)))
    assert s.pending_update is not None
    s, _ = step(s, CloseResult(h(12.01), "flat", filled_qty=D(2), avg_price=D("99.6"), attempts=1))
    assert s.status == "closed" and s.pending_update is None


def grace_sampled(side, price):
    """A position in grace (its target, the breakeven, stands still) sampled at ``price``."""
    s, _ = step(new_state(side), Start(h(5)))
    s, cmds = step(s, Tick(h(5), bid=price) if side == "long" else Tick(h(5), ask=price))
    assert any(isinstance(c, Emit) and c.event_type == "price_check" for c in cmds) and not s.close_in_flight
    return s


def assert_band_is_tight(s, now, long):
    """Each bound sits just inside the price where ``step`` would act: a hair inside is a
    no-op, a hair beyond samples or closes."""
    band = quiet_band(s, now)
    assert band is not None and band.long is long

    def tick(price):
        return Tick(now, bid=price) if long else Tick(now, ask=price)

    for bound, inward, outward in ((band.high, D(1) - D("1e-8"), D(1) + D("1e-8")),
                                   (band.low, D(1) + D("1e-8"), D(1) - D("1e-8"))):
        if bound is None:
            continue
        inside = tick(bound * inward)
        assert band.quiet_price(inside.bid, inside.ask, inside.last)
        assert step(s, inside) == (s, [])
        assert step(s, tick(bound * outward))[1] != []
    return band


def test_a_longs_band_reaches_the_sampling_thresholds_on_both_sides():
    s = grace_sampled("long", D("90.18"))  # 10 % below the target 100.2
    assert s.last_sample_distance == 10
    band = assert_band_is_tight(s, h(5), long=True)
    assert band.low is not None and band.until == h(5) + timedelta(seconds=60)


def test_a_shorts_band_reaches_the_sampling_thresholds_on_both_sides():
    s = grace_sampled("short", D("109.78"))  # 10 % above the target 99.8
    assert s.last_sample_distance == 10
    band = assert_band_is_tight(s, h(5), long=False)
    assert band.low is not None and band.high is not None


def test_a_long_sampled_so_far_below_its_target_that_no_lower_sample_is_possible_has_no_low_bound():
    s = grace_sampled("long", D("0.501"))  # 99.5 % below: one more material change would be price 0
    assert s.last_sample_distance == D("99.5")
    band = assert_band_is_tight(s, h(5), long=True)
    assert band.low is None


def test_a_skipped_or_not_yet_aged_position_is_quiet_at_any_price_until_the_next_sample_time():
    for side in ("long", "short"):
        s, _ = step(new_state(side), Start(h(1)))
        assert quiet_band(s, h(1)) == QuietBand(side == "long", None, None, h(1) + timedelta(seconds=60))
        s, _ = step(new_state(side), Start(h(5)))
        s, _ = step(s, PositionUpdate(h(5), trailing_active=True))
        assert quiet_band(s, h(5)) == QuietBand(side == "long", None, None, h(5) + timedelta(seconds=60))


def test_no_band_after_a_new_entry_price_until_the_next_sample():
    s = grace_sampled("long", D("90.18"))
    s, _ = step(s, PositionUpdate(h(5), entry_price=D(101)))
    assert s.last_sample_at is not None and s.last_sample_distance is None
    assert quiet_band(s, h(5)) is None


def test_a_cooldown_left_behind_by_a_trailing_stop_does_not_narrow_the_band():
    s, until = failed()
    s, _ = step(s, PositionUpdate(h(12.01) + timedelta(seconds=1), trailing_active=True))
    now = until + timedelta(seconds=10)
    s, _ = step(s, PositionUpdate(now, trailing_active=False))
    s, _ = step(s, Tick(now, bid=D(90)))
    assert s.status == "progressive_active" and not s.close_in_flight
    band = quiet_band(s, now)
    assert band is not None and band.until == now + timedelta(seconds=60)


# --- ticks between samples ------------------------------------------------------------------------

def test_a_close_between_samples_is_recorded_like_any_other():
    s = progressive()
    s, _ = step(s, Tick(h(12), bid=D("99.2")))
    now = h(12) + timedelta(seconds=10)
    a = assess("long", D(100), T0, now, CFG)
    s, cmds = step(s, Tick(now, bid=D("99.5"), ask=D("99.6")))
    assert cmds == timer_close("long", now, D("99.5"), bid=D("99.5"), ask=D("99.6"))
    assert s.close_triggered_at == now and a.target_price <= D("99.5")


def test_the_last_price_alone_closes_between_samples():
    s = progressive()
    s, _ = step(s, Tick(h(12), bid=D("99.2")))
    s, cmds = step(s, Tick(h(12) + timedelta(seconds=10), last=D("99.5")))
    assert s.close_in_flight and isinstance(cmds[-1], RequestClose)


def test_a_move_of_exactly_the_material_change_is_sampled():
    s = grace_sampled("long", D("90.18"))  # distance 10
    s, cmds = step(s, Tick(h(5) + timedelta(seconds=1), bid=D("90.681")))  # distance 9.5
    assert [c.event_type for c in cmds if isinstance(c, Emit)] == ["price_check"]
    assert s.last_sample_distance == D("9.5")


# --- when the moving target will reach the price ---------------------------------------------------

def test_a_progressive_tick_wakes_again_when_the_target_reaches_the_price():
    s = progressive()
    now = h(12)
    price = assess("long", D(100), T0, now + timedelta(seconds=10), CFG).target_price
    s, cmds = step(s, Tick(now, bid=price))
    [timer] = [c for c in cmds if isinstance(c, ScheduleTimer)]
    assert timer.kind == "target"
    assert now + timedelta(seconds=10) <= timer.at <= now + timedelta(seconds=10, milliseconds=1)


def test_crossing_time_is_the_first_instant_the_target_reaches_the_price():
    from actors.position import crossing_time
    for side in ("long", "short"):
        s = new_state(side)
        now, later = h(12), h(12) + timedelta(minutes=5)
        price = assess(side, D(100), T0, later, CFG).target_price
        at = crossing_time(s, price, now)
        assert later <= at <= later + timedelta(milliseconds=1)
        assert crossing_time(s, assess(side, D(100), T0, now, CFG).target_price, now) is None  # reached now
        assert crossing_time(s, D(200) if side == "short" else D(1), now) is None  # never within 30 days
    # from before the position ages: the crossing is found in the progressive phase
    s = new_state()
    price = assess("long", D(100), T0, h(20), CFG).target_price
    assert h(20) <= crossing_time(s, price, h(1)) <= h(20) + timedelta(milliseconds=1)


# --- odds and ends ---------------------------------------------------------------------------------

def test_an_unknown_event_is_refused_by_name():
    with pytest.raises(TypeError, match="unknown event 'tick'"):
        step(new_state(), "tick")


def test_an_unchanged_persist_field_reads_keep():
    from actors.position import KEEP
    assert repr(KEEP) == "KEEP"
    assert "status=KEEP" in repr(Persist(quantity=D(1)))


def _skipped_with_close_out():
    """Restarted in ``skipped`` (the bot's trailing stop owns it) with an order of ours
    still to reconcile: a crash came between our send and the stop taking over."""
    s, _ = step(new_state(status="skipped", close_in_flight=True, needs_reconcile=True), Start(h(12)))
    assert (s.status, s.close_in_flight) == ("skipped", True)
    return s


def test_a_close_that_fails_after_the_trailing_stop_took_over_leaves_it_to_the_stop():
    s = _skipped_with_close_out()
    now = h(12) + timedelta(seconds=2)
    s, cmds = step(s, CloseResult(now, "failed", attempts=3, error="boom"))
    assert cmds == [
        Persist(**{"last_error": "boom", "last_close_attempt_at": now, "close_attempts": 3, "quantity": D(2),
                 "closed_qty": D(0)}),
        Emit("aged.close.failed", success=False, error="boom", critical=True, data={"attempts": 3}),
    ]
    assert (s.status, s.error_until, s.close_in_flight) == ("skipped", None, False)
    s, cmds = step(s, PositionUpdate(now + timedelta(minutes=1), trailing_active=False))
    assert s.status == "progressive_active"  # the stop let go: managed again, no cool-down owed


def test_dust_after_the_trailing_stop_took_over_is_dust():
    s = _skipped_with_close_out()
    s, cmds = step(s, CloseResult(h(12) + timedelta(seconds=2), "dust", filled_qty=D("1.99"), avg_price=D("99.6"),
                                  remaining_qty=D("0.01"), attempts=2, error="below min"))
    assert s.status == "dust" and cmds[-1] == Stop()


def test_an_update_that_waited_for_a_close_failing_under_the_trailing_stop_is_applied_after_it():
    s = _skipped_with_close_out()
    s, cmds = step(s, PositionUpdate(h(12) + timedelta(seconds=1), entry_price=D(101), trailing_active=False))
    assert cmds == [] and s.pending_update is not None
    now = h(12) + timedelta(seconds=2)
    s, cmds = step(s, CloseResult(now, "failed", attempts=3, error="boom"))
    assert (s.entry_price, s.status, s.pending_update) == (D(101), "progressive_active", None)
    assert Persist(**{"status": "progressive_active"}) in cmds
    assert any(isinstance(c, Emit) and c.event_type == "position.changed" for c in cmds)
