"""The actor registry on trio's autojump MockClock: starting actors with the state in
hand or loaded, the one restart path (the supervisor's, reloading from the database),
recovery, messages, stopping, and fault injection from outside the actor.

As in test_position_actor.py: no sockets and no database; the actor loads its row
from a dict that counts its reads, the storage writer writes into a list.
"""

from dataclasses import replace
from datetime import timedelta

import pytest
import trio

from actors import position as pos
from actors.faults import FaultInjector, InjectedCrash
from actors.mailbox import Mailbox
from actors.registry import ActorRegistry
from feeds.tick import Tick
from storage.mapping import position_state
from supervisor import Supervisor
from tests.test_position_actor import SYMBOL, T0, setup


class CountingRows:
    """The repository's read an actor makes at start, over one row, counted."""

    def __init__(self, row):
        self.row = row
        self.reads = 0

    async def load_position(self, aged_id, config, settings):
        self.reads += 1
        return position_state(self.row, config, settings, inflight_orders=False)


def with_registry(origin, **kwargs):
    aged_id, ctx, ex, feed, written = setup(origin)
    rows = CountingRows(ctx.db.row)
    ctx.db = rows
    state = position_state(rows.row, ctx.config, ctx.settings, inflight_orders=False)
    return aged_id, ctx, feed, rows, state, written


async def running(nursery, ctx, registry):
    nursery.start_soon(ctx.writer.run)
    nursery.start_soon(ctx.executor.run)
    nursery.start_soon(ctx.timers.run)
    await nursery.start(registry.run)


async def test_ensure_returns_once_the_actor_watches_the_state_it_was_handed(autojump_clock):
    aged_id, ctx, feed, rows, state, _ = with_registry(T0 + timedelta(hours=4))
    registry = ActorRegistry(ctx, Supervisor("positions"))
    async with trio.open_nursery() as n:
        await running(n, ctx, registry)
        assert not registry.is_running(aged_id) and not registry.tell(aged_id, "hello")
        await registry.ensure(aged_id, state)
        assert registry.is_watching(aged_id) and len(feed.subscribers[SYMBOL]) == 1
        assert rows.reads == 0  # the state in hand is not read again
        assert registry.state(aged_id).status == "grace_active"  # Start moved it to its phase
        assert registry.by_episode() == {state.position_id: aged_id}
        await registry.ensure(aged_id, state)  # already running: nothing more
        assert len(feed.subscribers[SYMBOL]) == 1 and len(registry) == 1
        n.cancel_scope.cancel()


async def test_ensure_without_a_state_loads_the_row_before_it_returns(autojump_clock):
    aged_id, ctx, feed, rows, _, _ = with_registry(T0 + timedelta(hours=4))
    registry = ActorRegistry(ctx, Supervisor("positions"))
    async with trio.open_nursery() as n:
        await running(n, ctx, registry)
        await registry.ensure(aged_id)
        assert rows.reads == 1 and registry.is_watching(aged_id)
        n.cancel_scope.cancel()


async def test_a_crashed_actor_is_restarted_by_its_supervisor_and_reloads_from_the_database(autojump_clock):
    aged_id, ctx, feed, rows, state, _ = with_registry(T0 + timedelta(hours=4))
    supervisor = Supervisor("positions", backoff_initial=0.01)
    registry = ActorRegistry(ctx, supervisor)
    async with trio.open_nursery() as n:
        await running(n, ctx, registry)
        await registry.ensure(aged_id, state)
        first = registry.mailbox(aged_id)
        rows.row["quantity"] = state.quantity / 2  # the database moved on meanwhile
        registry.crash_on_next_tick(aged_id)
        feed.push(SYMBOL, bid="99", ask="99.01")
        with trio.fail_after(60):
            while registry.mailbox(aged_id) in (None, first):
                await trio.sleep(0.01)
        assert supervisor.children()[registry.child_id(aged_id)].restarts == 1
        assert "InjectedCrash" in supervisor.children()[registry.child_id(aged_id)].last_error
        assert rows.reads == 1  # the restart read the row; the handed-over state was used once
        assert registry.state(aged_id).quantity == state.quantity / 2
        assert first.closed and len(feed.subscribers[SYMBOL]) == 1
        feed.push(SYMBOL, bid="99", ask="99.01")  # the crash was one-shot: this tick is handled
        await trio.sleep(1)
        assert supervisor.children()[registry.child_id(aged_id)].restarts == 1
        n.cancel_scope.cancel()


async def test_a_crash_armed_before_the_actor_starts_fires_on_its_first_tick(autojump_clock):
    aged_id, ctx, feed, rows, state, _ = with_registry(T0 + timedelta(hours=4))
    supervisor = Supervisor("positions", backoff_initial=0.01)
    registry = ActorRegistry(ctx, supervisor)
    registry.crash_on_next_tick(aged_id)  # as the demo does, on the detection event
    async with trio.open_nursery() as n:
        await running(n, ctx, registry)
        await registry.ensure(aged_id, state)
        feed.push(SYMBOL, bid="99", ask="99.01")
        with trio.fail_after(60):
            while supervisor.children()[registry.child_id(aged_id)].restarts == 0:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()


async def test_fault_injection_lets_the_tick_through_a_quiet_band(autojump_clock):
    faults = FaultInjector()
    inner = Mailbox()
    box = faults.wrap("id", inner)
    faults.crash_on_next_tick("id")
    box.set_band(pos.QuietBand(True, None, None, T0), trio.current_time() + 100)
    tick = Tick("bybit", SYMBOL, None, None, None, None, trio.current_time())
    assert inner.send_latest(tick) and inner.quiet == 0  # no band while a crash is armed
    with pytest.raises(InjectedCrash):
        await box.receive()
    inner.send_latest(tick)
    assert await box.receive() is tick  # once only


async def test_recover_starts_what_has_no_actor_and_skips_what_finished(autojump_clock):
    aged_id, ctx, feed, rows, state, _ = with_registry(T0 + timedelta(hours=4))
    other = replace(state, aged_id=aged_id.__class__(int=aged_id.int ^ 1), position_id=2)
    asked: list = []

    async def load_for_recovery(skip):
        asked.append({state.aged_id, other.aged_id} - {a for a in (state.aged_id, other.aged_id) if a in skip})
        return {state.aged_id, other.aged_id}, [s for s in (state, other) if s.aged_id not in skip]

    registry = ActorRegistry(ctx, Supervisor("positions"), load_for_recovery=load_for_recovery)
    async with trio.open_nursery() as n:
        await running(n, ctx, registry)  # run() recovers at start
        assert registry.is_watching(state.aged_id) and registry.is_watching(other.aged_id)
        await registry.recover()
        assert asked == [{state.aged_id, other.aged_id}, set()]  # the second time, both have actors
        assert await registry.stop(other.aged_id)
        assert not registry.is_running(other.aged_id) and registry.state(other.aged_id) is None
        await registry.recover()
        assert registry.is_watching(other.aged_id) and rows.reads == 0
        n.cancel_scope.cancel()


async def test_an_actor_whose_position_closes_finishes_and_is_not_recovered_again(autojump_clock):
    aged_id, ctx, feed, rows, state, _ = with_registry(T0 + timedelta(hours=12))

    async def load_for_recovery(skip):
        # the database may not show the close yet: the row still looks active
        return {aged_id}, [] if aged_id in skip else [state]

    registry = ActorRegistry(ctx, Supervisor("positions"), load_for_recovery=load_for_recovery)
    ex = ctx.executor.exchanges["bybit"]
    async with trio.open_nursery() as n:
        await running(n, ctx, registry)
        ex.set_quote(SYMBOL, "101", "101.01")
        feed.push(SYMBOL, bid="101", ask="101.01")  # above the target: closes
        with trio.fail_after(60):
            while registry.is_running(aged_id):
                await trio.sleep(0.01)
        assert registry.has_finished(aged_id) and registry.state(aged_id) is None
        await registry.recover()
        assert not registry.is_running(aged_id)
        n.cancel_scope.cancel()
    assert SYMBOL not in ex.positions and len(ex.orders) == 1
