"""The per-position actor loop on trio's autojump MockClock: a 40-hour lifecycle in
virtual time, freshest-tick semantics, and timers.

Rules: no sockets and no database here — the storage writer writes into a list and
the actor loads its row from a dict (the database paths are covered in
test_runtime.py). The exchange is the in-memory one. autojump_threshold=0.
"""

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from uuid import uuid4

import trio

from actors.clock import PolicyClock
from actors.events import EventBus
from actors.executor import Executor
from actors import position
from actors.policy import PolicyConfig
from actors.position import Settings
from actors.position_actor import ActorContext
from actors.registry import ActorRegistry
from storage.writer import StorageWriter, WriterConfig
from doubles.exchange import MemoryExchange
from storage import ops
from storage.mapping import position_state
from supervisor import Observer, Supervisor
from tests.support import MemoryFeed

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"


class RowStore:
    """Just enough of the repository for load_state: one aged row, no orders."""

    def __init__(self, row):
        self.row = row

    async def load_position(self, aged_id, config, settings):
        return position_state(self.row, config, settings, inflight_orders=False)

    async def close_orders(self, aged_id):
        return []


def setup(origin, *, side="long", qty="1"):
    aged_id = uuid4()
    row = {"id": aged_id, "position_id": 1, "exchange": "bybit", "symbol": SYMBOL, "side": side,
           "entry_price": D(100), "quantity": D(qty), "position_opened_at": T0, "status": "detected",
           "closed_qty": D(0), "close_attempts": 0, "close_triggered_at": None, "last_price_check": None,
           "last_checked_price": None}
    written = []

    async def write_batch(batch):
        written.extend(batch)

    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, side, qty, "100", opened_at=T0)
    writer = StorageWriter(write_batch)
    executor = Executor({"bybit": ex}, writer, RowStore(row).close_orders)
    feed = MemoryFeed("bybit")
    ctx = ActorContext(db=RowStore(row), writer=writer, executor=executor, bus=EventBus(),
                       clock=PolicyClock(origin), config=PolicyConfig(),
                       settings=Settings(sample_interval=timedelta(minutes=30)), feeds={"bybit": feed})
    return aged_id, ctx, ex, feed, written


def start_actor(nursery, ctx, aged_id) -> ActorRegistry:
    """The actor, under a registry of its own, and what it needs running: writer, executor, timers."""
    nursery.start_soon(ctx.writer.run)
    nursery.start_soon(ctx.executor.run)
    nursery.start_soon(ctx.timers.run)
    registry = ActorRegistry(ctx, Supervisor("positions"))

    async def run():
        await nursery.start(registry.run)
        await registry.ensure(aged_id)  # no state handed over: the actor loads its row
    nursery.start_soon(run)
    return registry


def bids_stepped_on(monkeypatch) -> list:
    """Record the bid of every tick that reaches ``position.step`` (the list fills as they do)."""
    bids = []
    real_step = position.step

    def recording_step(state, event):
        if isinstance(event, position.Tick):
            bids.append(event.bid)
        return real_step(state, event)
    monkeypatch.setattr(position, "step", recording_step)
    return bids


def statuses(written):
    return [w.changes.status for w in written if isinstance(w, ops.UpdateAged) and "status" in w.changes.fields]


async def test_forty_hour_lifecycle_on_the_mock_clock(autojump_clock):
    aged_id, ctx, ex, feed, written = setup(T0 + timedelta(hours=2))
    steps = []

    class Steps(Observer):
        def state_changed(self, new, old):
            steps.append(new.status)

    ctx.observer = Steps()
    async with trio.open_nursery() as n:
        start_actor(n, ctx, aged_id)

        async def prices():
            while True:  # the long is 8 % under water: it closes when the allowance reaches 8 %
                ex.set_quote(SYMBOL, "92", "92.01")
                feed.push(SYMBOL, bid="92", ask="92.01", last="92")
                await trio.sleep(900)
        n.start_soon(prices)
        with trio.fail_after(40 * 3600):
            while SYMBOL in ex.positions:
                await trio.sleep(60)
        await trio.sleep(1)
        n.cancel_scope.cancel()
    assert statuses(written) == ["grace_active", "progressive_active", "closed"]
    [closed] = [w.changes for w in written if isinstance(w, ops.UpdateAged) and w.changes.status == "closed"]
    assert closed.close_reason == "loss_acceptable"
    # 8 % is reached 15 h into progressive (acceleration after 10 h): age 26 h
    assert T0 + timedelta(hours=26) <= ctx.clock.now() <= T0 + timedelta(hours=26, minutes=16)
    assert len(ex.orders) == 1
    phase_changes = [w for w in written if isinstance(w, ops.AddEvent) and w.event_type == "aged.phase.changed"]
    assert len(phase_changes) == 2
    checks = [w for w in written if isinstance(w, ops.AddEvent) and w.event_type == "price_check"]
    assert 40 <= len(checks) <= 60  # one per 30 min over ~24 h of watching, not one per tick
    assert any(isinstance(w, ops.ClosePosition) for w in written)


async def test_phase_changes_come_from_timers_without_any_tick(autojump_clock):
    aged_id, ctx, ex, feed, written = setup(T0 + timedelta(hours=1))
    async with trio.open_nursery() as n:
        start_actor(n, ctx, aged_id)
        await trio.sleep(11 * 3600)
        n.cancel_scope.cancel()
    assert statuses(written) == ["grace_active", "progressive_active"]
    [grace, progressive] = [w.changes for w in written if isinstance(w, ops.UpdateAged) and "status" in w.changes.fields]
    assert grace.grace_started_at == T0 + timedelta(hours=3)
    assert progressive.progressive_started_at == T0 + timedelta(hours=11)


async def test_an_actor_that_falls_behind_decides_on_the_freshest_tick(autojump_clock, monkeypatch):
    aged_id, ctx, ex, feed, written = setup(T0 + timedelta(hours=5))  # grace: target 100.2
    decisions = bids_stepped_on(monkeypatch)
    async with trio.open_nursery() as n:
        start_actor(n, ctx, aged_id)
        await trio.sleep(1)
        decisions.clear()
        for i in range(1000):  # a burst the actor cannot keep up with: no checkpoint in between
            feed.push(SYMBOL, bid=f"{99 + i / 1000:.3f}", ask="101")
        await trio.sleep(1)
        n.cancel_scope.cancel()
    # The mailbox keeps only the newest unread tick: one decision, on the freshest price.
    assert decisions == [D("99.999")]


async def test_a_stopped_writer_flushes_what_is_queued(autojump_clock):
    written = []

    async def slow_write(batch):
        await trio.sleep(0.5)
        written.extend(batch)

    writer = StorageWriter(slow_write, config=WriterConfig(max_batch=10))
    async with trio.open_nursery() as n:
        n.start_soon(writer.run)
        await trio.sleep(0)
        writer.submit(*[ops.AddEvent(uuid4(), "price_check") for _ in range(35)])
        await trio.sleep(0.1)
        n.cancel_scope.cancel()  # a graceful stop while a batch is being written
    assert len(written) == 35 and writer.depth == 0


async def test_mailbox_reads_control_messages_in_order_before_the_newest_tick():
    from actors.mailbox import Mailbox  # noqa: PLC0415
    box = Mailbox()
    box.send_latest("tick-1")
    box.send_nowait("result")
    box.send_latest("tick-2")
    box.send_nowait("update")
    assert [await box.receive() for _ in range(3)] == ["result", "update", "tick-2"]
    assert box.replaced == 1
    box.close()
    assert not box.send_latest("late")
    import pytest  # noqa: PLC0415
    with pytest.raises(trio.ClosedResourceError):
        box.send_nowait("late")
    with pytest.raises(trio.EndOfChannel):
        await box.receive()


async def test_mailbox_drops_ticks_inside_the_quiet_band_without_waking_the_actor():
    from types import SimpleNamespace as Frame  # noqa: PLC0415

    from actors.mailbox import Mailbox  # noqa: PLC0415
    from actors.position import QuietBand  # noqa: PLC0415

    def tick(bid):
        return Frame(bid=D(bid), ask=None, last=None)
    box = Mailbox()
    now = trio.current_time()
    box.set_band(QuietBand(True, D(99), D(100), T0), now + 10)
    assert box.send_latest(tick("99.5")) and box.quiet == 1
    assert box._tick is None and box._waiter is None  # nothing for the actor
    loud = tick("100")  # on the bound: not quiet
    box.send_latest(loud)
    assert box.quiet == 1 and await box.receive() is loud
    box.send_nowait("result")  # with a message waiting the band may be stale: keep the tick
    box.send_latest(tick("99.5"))
    assert [await box.receive(), box.quiet] == ["result", 1]
    assert (await box.receive()).bid == D("99.5")
    box.set_band(QuietBand(True, D(99), D(100), T0), now)  # run out
    box.send_latest(tick("99.5"))
    assert box.quiet == 1 and (await box.receive()).bid == D("99.5")
    box.set_band(None)
    box.send_latest(tick("99.5"))
    assert box.quiet == 1 and (await box.receive()).bid == D("99.5")


async def test_quiet_ticks_do_not_wake_the_actor_and_a_crossing_still_closes(autojump_clock, monkeypatch):
    aged_id, ctx, ex, feed, written = setup(T0 + timedelta(hours=12))  # progressive: target 99.5
    stepped = bids_stepped_on(monkeypatch)
    async with trio.open_nursery() as n:
        registry = start_actor(n, ctx, aged_id)
        await trio.sleep(1)
        feed.push(SYMBOL, bid="99.0", ask="99.01")  # the first tick is sampled: the band is set
        await trio.sleep(1)
        assert stepped == [D("99.0")]
        box = registry.mailbox(aged_id)
        for i in range(1000):
            feed.push(SYMBOL, bid=f"{99 + i / 10000:.4f}", ask="99.2")
            await trio.sleep(0.01)
        assert stepped == [D("99.0")] and box.quiet == 1000
        ex.set_quote(SYMBOL, "99.5", "99.51")
        feed.push(SYMBOL, bid="99.5", ask="99.51")  # reaches the target
        with trio.fail_after(60):
            while SYMBOL in ex.positions:
                await trio.sleep(0.1)
        n.cancel_scope.cancel()
    assert stepped == [D("99.0"), D("99.5")]
    assert len(ex.orders) == 1
    assert statuses(written)[-1] == "closed"
