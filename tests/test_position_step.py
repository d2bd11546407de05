"""The pure per-position state machine: examples, then Hypothesis stateful testing.

Rules: no trio, no database, no clock; events carry their own time.
"""

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from uuid import uuid4

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors.policy import PolicyConfig
from actors.position import (
    LEGAL, CloseResult, Emit, Persist, PositionState, PositionUpdate, PositionVanished, RequestClose,
    ScheduleTimer, Settings, Start, Stop, Tick, Timer, step,
)
from storage.mapping import position_state

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def h(hours) -> datetime:
    return T0 + timedelta(hours=hours)


def new_state(side="long", qty=D(2), **kw) -> PositionState:
    return PositionState(aged_id=uuid4(), position_id=1, exchange="bybit", symbol="BTC/USDT:USDT", side=side,
                         entry_price=D(100), quantity=qty, opened_at=T0, config=PolicyConfig(), **kw)


def of(kind, cmds):
    return [c for c in cmds if isinstance(c, kind)]


def statuses(cmds):
    return [c.fields["status"] for c in of(Persist, cmds) if "status" in c.fields]


def test_start_in_grace_persists_phase_and_sets_the_next_timer():
    s, cmds = step(new_state(), Start(h(5)))
    assert s.status == "grace_active"
    assert statuses(cmds) == ["grace_active"]
    [p] = [c for c in of(Persist, cmds) if "status" in c.fields]
    assert p.fields["grace_started_at"] == h(3) and p.fields["target_price"] == D("100.2")
    assert [e.event_type for e in of(Emit, cmds)] == ["aged.phase.changed"]
    assert of(ScheduleTimer, cmds)[0].at == h(11) + timedelta(microseconds=1)


def test_late_detection_goes_straight_to_progressive_on_the_policy_schedule():
    s, cmds = step(new_state(), Start(h(20)))
    assert s.status == "progressive_active"
    [p] = [c for c in of(Persist, cmds) if "status" in c.fields]
    assert p.fields["progressive_started_at"] == h(11)  # from the position's age, not from now
    assert not of(ScheduleTimer, cmds)


def test_grace_closes_only_at_breakeven_on_the_bid():
    s, _ = step(new_state(), Start(h(5)))
    s, cmds = step(s, Tick(h(6), bid=D("100.19"), ask=D("100.5"), last=D("100.4")))
    assert not of(RequestClose, cmds)
    s, cmds = step(s, Tick(h(6.1), bid=D("100.2"), ask=D("100.3")))
    [req] = of(RequestClose, cmds)
    assert req.qty == D(2) and req.next_attempt == 1 and not req.emergency
    assert s.close_in_flight and s.close_triggered_at == h(6.1)
    assert "aged.close.triggered" in [e.event_type for e in of(Emit, cmds)]


def test_no_second_close_while_one_is_in_flight():
    s, _ = step(new_state(), Start(h(5)))
    s, _ = step(s, Tick(h(6), bid=D(101)))
    for i in range(5):
        s, cmds = step(s, Tick(h(6.01 + i / 100), bid=D(102)))
        assert not of(RequestClose, cmds)


def test_fill_closes_with_reason_and_pnl():
    s, _ = step(new_state(), Start(h(12)))
    s, _ = step(s, Tick(h(12), bid=D("99.6")))  # target 99.5 → closes
    s, cmds = step(s, CloseResult(h(12.001), "flat", filled_qty=D(2), avg_price=D("99.6"), remaining_qty=D(0),
                                  attempts=1, last_order_id="X"))
    assert s.status == "closed" and of(Stop, cmds)
    [p] = [c for c in of(Persist, cmds) if "status" in c.fields]
    assert p.fields["close_reason"] == "loss_acceptable" and p.fields["phase_at_close"] == "progressive"
    assert p.fields["pnl_percent"] == D("-0.6") and p.fields["closed_qty"] == D(2)
    # closed is final: later events change nothing
    s2, cmds = step(s, Tick(h(13), bid=D(200)))
    assert s2 == s and not of(RequestClose, cmds)


def test_failed_close_goes_to_error_then_retries_after_cooldown():
    st_ = new_state(settings=Settings(error_cooldown=timedelta(minutes=5)))
    s, _ = step(st_, Start(h(12)))
    s, _ = step(s, Tick(h(12), bid=D(100)))
    s, cmds = step(s, CloseResult(h(12.01), "failed", attempts=4, error="rejected"))
    assert s.status == "error" and not s.close_in_flight
    assert [e for e in of(Emit, cmds) if e.event_type == "aged.close.failed"][0].critical
    assert of(ScheduleTimer, cmds)[0].kind == "cooldown"
    s, cmds = step(s, Tick(h(12.02), bid=D(100)))  # still cooling down
    assert not of(RequestClose, cmds)
    s, cmds = step(s, Tick(h(12.2), bid=D(100)))
    assert statuses(cmds) == ["progressive_active"]
    [req] = of(RequestClose, cmds)
    assert req.next_attempt == 5  # deterministic client ids never reuse an attempt number


def test_vanished_position_is_closed_as_manual_unless_our_close_is_in_flight():
    s, _ = step(new_state(), Start(h(5)))
    s2, cmds = step(s, PositionVanished(h(6)))
    assert s2.status == "closed"
    assert [c for c in of(Persist, cmds) if "status" in c.fields][0].fields["close_reason"] == "manual"
    s, _ = step(s, Tick(h(6), bid=D(101)))
    s3, cmds = step(s, PositionVanished(h(6.01)))
    assert s3.status == "grace_active" and not cmds


def test_trailing_stop_skips_and_resumes():
    s, _ = step(new_state(), Start(h(5)))
    s, cmds = step(s, PositionUpdate(h(6), trailing_active=True))
    assert s.status == "skipped"
    s, cmds = step(s, Tick(h(6.1), bid=D(200)))
    assert not of(RequestClose, cmds)
    s, cmds = step(s, PositionUpdate(h(12), trailing_active=False))
    assert s.status == "progressive_active"


def test_emergency_close_at_any_price():
    st_ = new_state(settings=Settings(emergency_close_after_hours=D(48)))
    s, _ = step(st_, Start(h(47)))
    s, cmds = step(s, Tick(h(47.5), bid=D(50)))
    assert not of(RequestClose, cmds)
    s, cmds = step(s, Tick(h(48), bid=D(50)))
    [req] = of(RequestClose, cmds)
    assert req.emergency
    s, cmds = step(s, CloseResult(h(48.01), "flat", filled_qty=D(2), avg_price=D(50), attempts=1))
    assert [c for c in of(Persist, cmds) if "status" in c.fields][0].fields["close_reason"] == "emergency"


def test_price_checks_are_sampled():
    st_ = new_state(settings=Settings(sample_interval=timedelta(seconds=60), material_change_percent=D("0.5")))
    s, _ = step(st_, Start(h(5)))
    samples = 0
    for i in range(1000):  # 1000 ticks over 100 s, price wobbling by 0.01
        s, cmds = step(s, Tick(h(5) + timedelta(milliseconds=100 * i), bid=D(99) + D(i % 2) / 100))
        samples += len([e for e in of(Emit, cmds) if e.event_type == "price_check"])
    assert samples == 2  # the first, then one after 60 s
    s, cmds = step(s, Tick(h(5) + timedelta(seconds=101), bid=D(98)))  # distance moved ~1 point
    assert [e.event_type for e in of(Emit, cmds)] == ["price_check"]


def test_restart_with_a_triggered_close_reconciles_before_anything_else():
    row = {"id": uuid4(), "position_id": 1, "exchange": "bybit", "symbol": "BTC/USDT:USDT", "side": "short",
           "entry_price": D(100), "quantity": D(1), "position_opened_at": T0, "status": "grace_active",
           "closed_qty": D(0), "close_attempts": 1, "close_triggered_at": h(6), "last_price_check": None,
           "last_checked_price": None}
    s = position_state(row, PolicyConfig(), Settings(), inflight_orders=True)
    s, cmds = step(s, Start(h(7)))
    [req] = of(RequestClose, cmds)
    assert req.reconcile_only and s.close_in_flight
    s, cmds = step(s, Tick(h(7), ask=D(90)))
    assert not of(RequestClose, cmds)
    s, cmds = step(s, CloseResult(h(7), "open", remaining_qty=D(1), attempts=1))
    assert not s.close_in_flight
    s, cmds = step(s, Tick(h(7.1), ask=D(90)))
    assert of(RequestClose, cmds)[0].next_attempt == 2


def test_partial_fill_then_failure_keeps_the_remainder_under_watch():
    s, _ = step(new_state(qty=D(2)), Start(h(12)))
    s, _ = step(s, Tick(h(12), bid=D(100)))
    s, cmds = step(s, CloseResult(h(12.01), "failed", filled_qty=D("1.5"), avg_price=D(100), remaining_qty=D("0.5"),
                                  attempts=4, error="timeout"))
    assert s.quantity == D("0.5") and s.closed_qty == D("1.5") and s.status == "error"


# --- stateful ----------------------------------------------------------------------------------

class PositionMachine(RuleBasedStateMachine):
    """Random event sequences; the invariants must hold after every step."""

    @initialize(side=st.sampled_from(["long", "short"]), qty=st.integers(1, 100),
                start_h=st.floats(0, 45, allow_nan=False))
    def start(self, side, qty, start_h):
        self.now = h(start_h)
        self.original = D(qty)
        self.s = new_state(side=side, qty=D(qty), settings=Settings(error_cooldown=timedelta(minutes=10),
                                                                   emergency_close_after_hours=D(60)))
        self.in_flight_requests = 0
        self.requested_total = D(0)
        self.filled_total = D(0)
        self.history = [self.s.status]
        self.apply(Start(self.now))

    def apply(self, event):
        before = self.s.status
        self.s, cmds = step(self.s, event)
        for c in cmds:
            if isinstance(c, RequestClose):
                assert not c.reconcile_only
                self.in_flight_requests += 1
                assert self.in_flight_requests == 1, "two closes in flight"
                assert 0 < c.qty <= self.original - self.filled_total, "asked to close more than is open"
            if isinstance(c, Persist) and "status" in c.fields:
                assert c.fields["status"] in LEGAL[self.history[-1]], (self.history, c.fields["status"])
                self.history.append(c.fields["status"])
        assert before == "closed" or self.s.status == self.history[-1]

    @rule(minutes=st.integers(0, 600))
    def advance(self, minutes):
        self.now += timedelta(minutes=minutes)

    @rule(price=st.decimals(80, 120, places=2))
    def tick(self, price):
        self.apply(Tick(self.now, bid=price, ask=price + D("0.01"), last=price))

    @rule()
    def timer(self):
        self.apply(Timer(self.now))

    @precondition(lambda self: self.in_flight_requests == 1)
    @rule(outcome=st.sampled_from(["flat", "failed", "failed_partial", "vanished", "open"]),
          frac=st.integers(1, 99))
    def close_result(self, outcome, frac):
        remaining = self.original - self.filled_total
        self.in_flight_requests = 0
        if outcome == "flat":
            self.filled_total += remaining
            self.apply(CloseResult(self.now, "flat", filled_qty=self.filled_total, avg_price=D(100), remaining_qty=D(0),
                                   attempts=self.s.close_attempts + 1))
        elif outcome == "failed_partial" and remaining > 1:
            part = max(D(1), (remaining * frac / 100).quantize(D(1)))
            part = min(part, remaining - 1)
            self.filled_total += part
            self.apply(CloseResult(self.now, "failed", filled_qty=self.filled_total, avg_price=D(100),
                                   remaining_qty=remaining - part, attempts=self.s.close_attempts + 2, error="x"))
        elif outcome == "vanished":
            self.apply(CloseResult(self.now, "vanished", attempts=self.s.close_attempts))
        elif outcome == "open":
            self.apply(CloseResult(self.now, "open", filled_qty=self.filled_total, remaining_qty=remaining,
                                   attempts=self.s.close_attempts + 1))
        else:
            self.apply(CloseResult(self.now, "failed", filled_qty=self.filled_total, attempts=self.s.close_attempts + 1,
                                   error="x"))

    @rule(trailing=st.booleans())
    def trailing(self, trailing):
        self.apply(PositionUpdate(self.now, trailing_active=trailing))

    @rule()
    def vanish(self):
        self.apply(PositionVanished(self.now))

    @invariant()
    def closed_quantity_matches_the_fills(self):
        assert self.s.closed_qty == self.filled_total

    @invariant()
    def never_more_than_the_position(self):
        assert self.s.closed_qty + self.s.quantity <= self.original or self.s.status == "closed"
        assert self.s.closed_qty <= self.original

    @invariant()
    def closed_means_no_flight(self):
        if self.s.status == "closed":
            assert not self.s.close_in_flight
        assert self.s.close_in_flight == (self.in_flight_requests == 1)


TestPositionMachine = PositionMachine.TestCase
TestPositionMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_a_state_loaded_from_the_database_samples_on_its_first_tick():
    row = {"id": uuid4(), "position_id": 1, "exchange": "bybit", "symbol": "BTC/USDT:USDT", "side": "long",
           "entry_price": D(100), "quantity": D(1), "position_opened_at": T0, "status": "grace_active",
           "closed_qty": D(0), "close_attempts": 0, "close_triggered_at": None, "last_price_check": h(6),
           "last_checked_price": D(99)}
    s = position_state(row, PolicyConfig(), Settings(), inflight_orders=False)
    s, _ = step(s, Start(h(6.001)))
    s, cmds = step(s, Tick(h(6.002), bid=D("99.5")))
    assert [e.event_type for e in of(Emit, cmds)] == ["price_check"]


def test_ordinary_ticks_leave_the_state_object_untouched():
    s, _ = step(new_state(), Start(h(5)))
    s, _ = step(s, Tick(h(5), bid=D(99)))
    for i in range(1, 50):
        s2, cmds = step(s, Tick(h(5) + timedelta(seconds=i), bid=D(99)))
        assert s2 is s and cmds == []


# --- episodes: averaging in, reductions, updates during a close --------------------------

def test_averaging_in_moves_breakeven_and_targets_at_once():
    s, _ = step(new_state(), Start(h(5)))
    s, _ = step(s, Tick(h(5.1), bid=D("100.1"), ask=D("100.2")))
    s, cmds = step(s, PositionUpdate(h(5.2), quantity=D(4), entry_price=D(105)))
    assert s.quantity == D(4) and s.entry_price == D(105)
    [p] = of(Persist, cmds)
    assert p.fields["entry_price"] == D(105) and p.fields["breakeven_price"] == D("105.21")
    assert p.fields["target_price"] == D("105.21")
    [e] = of(Emit, cmds)
    assert e.event_type == "position.changed"
    assert e.data == {"old_quantity": "2", "new_quantity": "4", "old_entry_price": "100", "new_entry_price": "105"}
    # 100.5 was above the old breakeven (100.2), it is below the new one: no close
    s, cmds = step(s, Tick(h(5.3), bid=D("100.5"), ask=D("100.6")))
    assert not of(RequestClose, cmds)
    s, cmds = step(s, Tick(h(5.4), bid=D("105.25"), ask=D("105.3")))
    [close] = of(RequestClose, cmds)
    assert close.qty == D(4)  # the whole size, once


def test_an_update_during_a_close_is_applied_after_it():
    s, _ = step(new_state(), Start(h(5)))
    s, cmds = step(s, Tick(h(6), bid=D("100.3"), ask=D("100.4")))
    assert of(RequestClose, cmds) and s.close_in_flight
    s, cmds = step(s, PositionUpdate(h(6.01), quantity=D(3), entry_price=D(101)))
    assert cmds == [] and s.quantity == D(2) and s.entry_price == D(100)  # kept, not dropped
    s, cmds = step(s, CloseResult(h(6.02), "failed", attempts=3, error="boom"))
    assert s.status == "error" and s.entry_price == D(101) and s.quantity == D(3)
    assert "position.changed" in [e.event_type for e in of(Emit, cmds)]
    assert s.pending_update is None


def test_after_a_partial_close_the_exchange_size_wins_over_an_older_update():
    s, _ = step(new_state(), Start(h(5)))
    s, _ = step(s, Tick(h(6), bid=D("100.3"), ask=D("100.4")))
    s, _ = step(s, PositionUpdate(h(6.01), quantity=D(5), entry_price=D(101)))
    s, _ = step(s, CloseResult(h(6.02), "open", filled_qty=D(1), avg_price=D("100.3"), remaining_qty=D(1),
                               attempts=1))
    assert s.quantity == D(1) and s.entry_price == D(101) and not s.close_in_flight


def test_an_episode_that_ended_during_our_close_is_finished_after_it():
    s, _ = step(new_state(), Start(h(5)))
    s, _ = step(s, Tick(h(6), bid=D("100.3"), ask=D("100.4")))
    s, cmds = step(s, PositionVanished(h(6.01)))
    assert cmds == [] and s.status == "grace_active"
    s, cmds = step(s, CloseResult(h(6.02), "failed", attempts=3, error="rejected"))
    assert s.status == "closed" and of(Stop, cmds)
    assert [p.fields["close_reason"] for p in of(Persist, cmds) if "close_reason" in p.fields] == ["manual"]


# --- a target that moves past a price that stands still ---------------------------------

def test_a_target_that_moves_past_an_unchanged_price_closes_on_its_own_timer():
    from actors.position import crossing_time
    s, _ = step(new_state(), Start(h(12)))  # progressive since 11 h: the allowance grows every instant
    assert s.status == "progressive_active"
    bid = D("99.2")  # short of the target now (about 99.5); the target falls to it later
    s, cmds = step(s, Tick(h(12), bid=bid, ask=D("99.3")))
    assert not of(RequestClose, cmds)
    crossing = crossing_time(s, bid, h(12))
    assert crossing is not None and h(12) < crossing
    [timer] = [t for t in of(ScheduleTimer, cmds) if t.kind == "target"]
    assert timer.at == min(crossing, h(12) + s.settings.sample_interval)
    # No tick ever comes again. The timers walk on with the same quote until the crossing.
    now = timer.at
    for _ in range(200):
        s, cmds = step(s, Timer(now, "target", bid=bid, ask=D("99.3")))
        if of(RequestClose, cmds):
            break
        [timer] = [t for t in of(ScheduleTimer, cmds) if t.kind == "target"]
        now = timer.at
    [close] = of(RequestClose, cmds)
    # at the crossing (found to the millisecond), not at some later tick
    assert crossing - timedelta(milliseconds=1) <= now < crossing + timedelta(seconds=1)


def test_a_timer_without_a_recent_quote_closes_nothing():
    s, _ = step(new_state(), Start(h(12)))
    s, cmds = step(s, Timer(h(40), "target"))
    assert not of(RequestClose, cmds)
