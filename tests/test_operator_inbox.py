"""Operator actions through a running Service: recorded in PostgreSQL, picked up by the
operator inbox, answered by the position actors.

Rules: the exchange is :class:`doubles.exchange.MemoryExchange` and ticks come from
:class:`tests.support.MemoryFeed`; the database is real and its notifications are
real. The service runs on trio's autojump MockClock with the ``mdb`` database (virtual
time stands still while a query is in flight). Waits are for conditions (a row, an
outcome), each with a generous ceiling.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
import trio

from actors.operator import BadAction, ClearOverride, ForceClose, Hold, Override, Release
from doubles.exchange import MemoryExchange
from service.operator_inbox import OPERATOR_ACTION
from tests.support import MemoryFeed, make_service

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SYMBOL = "BTC/USDT:USDT"


async def until(predicate, what, *, timeout=3600 * 10, interval=0.5):
    """Poll the async ``predicate`` every ``interval`` virtual seconds (at most ``timeout``)."""
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(interval)
        return
    raise AssertionError(f"{what}: did not happen")


async def aged_row(db):
    rows = await db.fetch("SELECT * FROM monitoring.aged_positions")
    return rows[0] if rows else None


async def applied(db, action_id):
    async def done():
        return any(a["id"] == action_id and a["applied_at"] is not None for a in await db.actions())
    await until(done, f"action {action_id} applied")
    [row] = [a for a in await db.actions() if a["id"] == action_id]
    return row


async def started_service(db, nursery, *, side="long", entry="100", at_hours=5, bid="99", latency=0.0):
    ex = MemoryExchange(name="bybit", latency=latency)
    ex.set_position(SYMBOL, side, "2", entry, opened_at=T0)
    ex.set_quote(SYMBOL, bid, str(D(bid) + D("0.01")), bid)
    feed = MemoryFeed("bybit")
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=at_hours))
    nursery.start_soon(svc.run)

    async def watching():
        row = await aged_row(db)
        return row is not None and svc.registry.is_watching(row["id"])
    await until(watching, "the aged position is watched")
    return svc, ex, feed, await aged_row(db)


def quote(ex, feed, bid):
    ex.set_quote(SYMBOL, bid, str(D(bid) + D("0.01")), bid)
    feed.push(SYMBOL, bid=bid, ask=str(D(bid) + D("0.01")), last=bid)


async def test_a_hold_stops_the_close_and_a_release_closes_at_once(mock_clock, mdb):
    async with trio.open_nursery() as n:
        svc, ex, feed, aged = await started_service(mdb, n)  # grace: closes at 100.2
        announced = []
        svc.bus.subscribe(lambda e: announced.append(e) if e.type == OPERATOR_ACTION else None)
        until_at = svc.clock.now() + timedelta(hours=4)
        hold = await mdb.record_action(Hold(aged["id"], until_at, "funding at noon"), "cli:alice")
        row = await applied(mdb, hold["id"])
        assert row["outcome"] == f"held until {until_at.isoformat()}" and row["error"] is None
        assert svc.registry.state(aged["id"]).hold_until == until_at

        quote(ex, feed, "101")  # well above the target

        async def sampled():
            return svc.registry.state(aged["id"]).last_price == D(101)
        await until(sampled, "the tick above the target was judged")
        await trio.sleep(600)
        quote(ex, feed, "101")
        assert ex.orders == [] and (await aged_row(mdb))["status"] == "grace_active"

        release = await mdb.record_action(Release(aged["id"], "news was fine"), "api")
        assert (await applied(mdb, release["id"]))["outcome"] == "released"

        async def closed():
            return (await aged_row(mdb))["status"] == "closed"
        await until(closed, "closed after the release")  # on the quote it had: no new tick needed
        svc.shutdown()
    final = await aged_row(mdb)
    assert final["close_reason"] == "profitable" and final["hold_until"] is None and len(ex.orders) == 1
    assert [(e.data["action"], e.data["actor"], e.data["outcome"]) for e in announced] == [
        ("hold", "cli:alice", f"held until {until_at.isoformat()}"), ("release", "api", "released")]
    events = [e["event_type"] for e in await mdb.events(aged["id"])]
    assert "operator.hold" in events and "operator.release" in events


async def test_a_force_close_closes_as_manual_and_a_second_one_is_already_closing(mock_clock, mdb):
    async with trio.open_nursery() as n:
        svc, ex, feed, aged = await started_service(mdb, n, bid="90", latency=5.0)  # under water, slow exchange
        quote(ex, feed, "90")
        first = await mdb.record_action(ForceClose(aged["id"], "risk off"), "cli:bob")
        second = await mdb.record_action(ForceClose(aged["id"]), "api")
        assert (await applied(mdb, first["id"]))["outcome"] == "close sent"
        assert (await applied(mdb, second["id"]))["outcome"] == "already closing"

        async def closed():
            return (await aged_row(mdb))["status"] == "closed"
        await until(closed, "the forced close completed")
        svc.shutdown()
    final = await aged_row(mdb)
    assert final["close_reason"] == "manual" and final["close_price"] == D(90) and len(ex.orders) == 1
    [wal] = await mdb.close_orders(aged["id"])  # through the write-ahead path like any close
    assert wal["state"] == "filled" and wal["client_order_id"].endswith("-1")
    assert SYMBOL not in ex.positions
    with pytest.raises(BadAction, match="is closed"):
        await mdb.record_action(ForceClose(aged["id"]), "api")


async def test_an_override_moves_the_target_of_the_running_actor_and_a_clear_moves_it_back(mock_clock, mdb):
    async with trio.open_nursery() as n:
        svc, ex, feed, aged = await started_service(mdb, n, at_hours=12, bid="95")  # progressive: target 99.5
        at = T0 + timedelta(hours=12)
        assert svc.registry.state(aged["id"]).schedule.assess(at).target_price == D("99.5")
        over = await mdb.record_action(Override("bybit", SYMBOL, {"loss_step_percent": "2"}, "thin book"), "api")
        assert (await applied(mdb, over["id"]))["outcome"] == "applied to 1 position"
        state = svc.registry.state(aged["id"])
        assert state.config.loss_step_percent == D(2)
        assert state.schedule.assess(at).target_price == D(98)

        async def persisted():
            return D("97.9") < (await aged_row(mdb))["target_price"] <= D(98)
        await until(persisted, "the new target recorded")
        clear = await mdb.record_action(ClearOverride("bybit", SYMBOL), "api")
        assert (await applied(mdb, clear["id"]))["outcome"] == "applied to 1 position"
        assert svc.registry.state(aged["id"]).config == svc.config.policy
        svc.shutdown()
    assert ex.orders == []


async def test_a_hold_taken_while_no_service_runs_holds_after_a_restart(mock_clock, mdb):
    async with trio.open_nursery() as n:
        svc, ex, feed, aged = await started_service(mdb, n)
        svc.shutdown()
    hold_until = T0 + timedelta(hours=30)
    hold = await mdb.record_action(Hold(aged["id"], hold_until, "until the weekend"), "cli:carol")
    assert (await mdb.aged_position(aged["id"]))["hold_until"] == hold_until  # in force with no service
    async with trio.open_nursery() as n:
        svc, ex, feed, _ = await started_service(mdb, n)
        assert svc.registry.state(aged["id"]).hold_until == hold_until
        row = await applied(mdb, hold["id"])
        assert row["outcome"].startswith("held until")
        quote(ex, feed, "105")

        async def sampled():
            return svc.registry.state(aged["id"]).last_price == D(105)
        await until(sampled, "the tick above the target was judged")
        await trio.sleep(600)
        assert ex.orders == []
        svc.shutdown()


async def test_an_action_for_a_position_without_an_actor_is_recorded(mock_clock, mdb):
    async with trio.open_nursery() as n:
        svc, ex, feed, aged = await started_service(mdb, n)
        ex.positions.pop(SYMBOL)
        await svc.registry.stop(aged["id"])  # as if this service did not manage it
        await mdb.execute("UPDATE monitoring.aged_positions SET status = 'skipped' WHERE id = $1", aged["id"])
        close = await mdb.record_action(ForceClose(aged["id"]), "api")
        hold = await mdb.record_action(Hold(aged["id"], T0 + timedelta(hours=9), "x"), "api")
        assert (await applied(mdb, close["id"]))["outcome"] == "not active (skipped)"
        assert (await applied(mdb, hold["id"]))["outcome"] == "recorded"
        svc.shutdown()
    assert ex.orders == []


async def test_without_listen_the_poll_alone_applies_an_action(mock_clock, mdb):
    from dataclasses import replace


    async with trio.open_nursery() as n:
        svc, ex, feed, aged = await started_service(mdb, n)
        svc.shutdown()
    async with trio.open_nursery() as n:
        ex = MemoryExchange(name="bybit")
        ex.set_position(SYMBOL, "long", "2", "100", opened_at=T0)
        ex.set_quote(SYMBOL, "99", "99.01", "99")
        feed = MemoryFeed("bybit")
        svc = make_service(mdb, ex, feed, origin=T0 + timedelta(hours=5))
        svc.operator.config = replace(svc.operator.config, listen=False)
        n.start_soon(svc.run)

        async def watching():
            return svc.registry.is_watching(aged["id"])
        await until(watching, "watched again")
        started_at = trio.current_time()
        hold = await mdb.record_action(Hold(aged["id"], T0 + timedelta(hours=9), "poll"), "api")
        row = await applied(mdb, hold["id"])
        assert row["outcome"].startswith("held until") and not svc.operator.listening
        assert trio.current_time() - started_at <= 1.0  # virtual time: one poll interval at most
        svc.shutdown()


async def test_a_database_outage_pauses_the_inbox_and_stops_nothing(aio_loop, database_url, db):
    """Real clock: the proxy cuts real connections. Each step waits for its condition."""
    from actors.clock import PolicyClock
    from service.config import DEFAULTS
    from service.runtime import Service
    from storage.repository import Database
    from tests.support import DatabaseProxy, wait_until

    async with trio.open_nursery() as n:
        proxy = await n.start(DatabaseProxy(database_url).run)
        pdb = await Database.connect(proxy.url, max_size=2, command_timeout=60, connect_timeout=60)
        ex = MemoryExchange(name="bybit")
        ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
        ex.set_quote(SYMBOL, "99", "99.01", "99")
        svc = Service(pdb, {"bybit": ex}, {"bybit": MemoryFeed("bybit")}, DEFAULTS, PolicyClock(T0 + timedelta(hours=5)))
        n.start_soon(svc.run)
        with trio.fail_after(60):
            while (aged := await aged_row(db)) is None:
                await trio.sleep(0.05)
        await wait_until(lambda: svc.registry.is_watching(aged["id"]), "watched")
        await proxy.cut()
        await wait_until(lambda: svc.operator._db_away, "the inbox noticed the outage")
        hold = await db.record_action(Hold(aged["id"], T0 + timedelta(hours=9), "during the outage"), "api")
        # a poll fails while the database is away (the LISTEN connection went with it)
        polls = svc.operator.polls_failed
        await wait_until(lambda: svc.operator.polls_failed > polls, "a poll during the outage")
        proxy.restore()
        row = await applied(db, hold["id"])
        assert row["outcome"].startswith("held until")
        assert svc.root.healthy() and svc.root.children()["operator"].restarts == 0
        svc.shutdown()
        await pdb.close()
        n.cancel_scope.cancel()
