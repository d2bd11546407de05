"""The actor runtime end to end on the in-memory exchange and a real PostgreSQL.

Rules: the exchange is :class:`doubles.exchange.MemoryExchange` and ticks come from
:class:`tests.support.MemoryFeed`; the database is real. Lifecycle tests run on trio's
autojump MockClock with the ``mdb`` database, which holds virtual time still while any
of its calls is in flight (see tests/conftest.py), so a slow round trip never lets
time jump; asyncpg's own timeouts are off. The outage test runs on the real clock and
waits for conditions (a row, a sampled check, a fill), never for an amount of time.
"""

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import trio
import trio.testing

from actors.clock import PolicyClock
from actors.detector import DetectorConfig
from actors.position import Settings
from exchanges.errors import RetryableError
from doubles.exchange import MemoryExchange
from service.config import DEFAULTS
from service.runtime import Service
from storage import ops as op
from storage.errors import StorageUnavailable
from storage.repository import Database
from tests.support import DatabaseProxy, MemoryFeed, make_service, push_prices, wait_until, within

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"


async def wait_for(predicate, timeout=3600 * 60, interval=60.0):
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)


async def aged_row(db):
    rows = await db.fetch("SELECT * FROM monitoring.aged_positions")
    return rows[0] if rows else None


async def test_virtual_time_stands_still_while_a_query_is_in_flight(mock_clock, mdb):
    # The premise of the mock-clock tests (tests/conftest.py): a slow round trip never
    # lets virtual time jump, so no timer fires while the database is answering.
    woke = []

    async def sleeper():
        await trio.sleep(1)
        woke.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(sleeper)
        before = trio.current_time()
        await mdb.execute("SELECT pg_sleep(0.3)")  # 300 real ms with every task blocked
        assert trio.current_time() == before and woke == []
    assert woke == [before + 1]  # and with nothing in flight it jumps at once


async def test_forty_hour_lifecycle_grace_progressive_close(mock_clock, mdb):
    db = mdb
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "2", "100", opened_at=T0)
    ex.set_quote(SYMBOL, "99", "99.01", "99")
    feed = MemoryFeed("bybit")
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=1))
    started = trio.current_time()
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(push_prices, svc, feed, lambda now: ("99", "99.01"), 600)

        async def closed():
            row = await aged_row(db)
            return row is not None and row["status"] == "closed"
        await wait_for(closed, interval=1800)
        svc.shutdown()
        n.cancel_scope.cancel()
    virtual_hours = (trio.current_time() - started) / 3600
    row = await aged_row(db)
    # The target reaches 99 (1 % tolerance) two hours into progressive: age 13 h.
    assert row["close_reason"] == "loss_acceptable" and row["phase_at_close"] == "progressive"
    assert T0 + timedelta(hours=13) <= row["close_triggered_at"] <= T0 + timedelta(hours=13, minutes=10)
    assert row["detected_at"] - T0 < timedelta(hours=3, seconds=1)  # detected at the aging instant
    assert row["closed_qty"] == D(2) and row["close_price"] == D(99)
    assert 11 < virtual_hours < 14
    assert len(ex.orders) == 1 and ex.orders[0].client_order_id.endswith("-1")
    assert SYMBOL not in ex.positions
    history = [(h["from_status"], h["to_status"]) for h in await db.history(row["id"])]
    assert history == [(None, "grace_active"), ("grace_active", "progressive_active"),
                       ("progressive_active", "closed")]
    events = [e["event_type"] for e in await db.events(row["id"])]
    for needed in ("aged.position.detected", "aged.phase.changed", "aged.close.triggered", "aged.close.completed"):
        assert needed in events
    assert 0 < events.count("price_check") <= 70  # sampled at most every 10 minutes over 10 hours
    [wal] = await db.close_orders(row["id"])
    assert wal["state"] == "filled" and wal["filled_qty"] == D(2)
    book = await db.fetch("SELECT status FROM monitoring.episodes")
    assert [b["status"] for b in book] == ["closed"]


async def test_actor_crashed_mid_close_restarts_and_exactly_one_order_is_sent(mock_clock, mdb):
    db = mdb
    ex = MemoryExchange(name="bybit", latency=5.0)  # each exchange call takes 5 virtual seconds
    ex.set_position(SYMBOL, "short", "1", "100", opened_at=T0)
    ex.set_quote(SYMBOL, "99.5", "99.6")
    feed = MemoryFeed("bybit")
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=5))  # in grace: target 99.8
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)

        async def triggered():
            row = await aged_row(db)
            return row is not None and row["close_triggered_at"] is not None
        async def detected():
            return await aged_row(db) is not None
        await wait_for(detected, interval=0.5)
        await trio.sleep(1)
        ex.set_quote(SYMBOL, "99.5", "99.6")
        feed.push(SYMBOL, bid="99.5", ask="99.6")
        await wait_for(triggered, interval=0.2)
        row = await aged_row(db)
        svc.registry.crash_on_next_tick(row["id"])
        feed.push(SYMBOL, bid="99.5", ask="99.6")  # the actor crashes while the order is in flight

        async def closed():
            return (await aged_row(db))["status"] == "closed"
        await wait_for(closed, interval=0.5)
        restarts = svc.positions.children()
        svc.shutdown()
        n.cancel_scope.cancel()
    assert len(ex.orders) == 1
    row = await aged_row(db)
    assert row["close_reason"] == "profitable"  # short from 100 closed at 99.6: +0.2 % net
    assert all(c.restarts == 0 for c in restarts.values())  # the restarted actor finished and left
    assert svc.positions.children() == {}


async def test_runtime_restarted_mid_lifecycle_resumes_without_duplicate_orders(mock_clock, mdb):
    db = mdb
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    ex.set_position("ETH/USDT:USDT", "short", "3", "2000", opened_at=T0 + timedelta(hours=1))
    feed = MemoryFeed("bybit")

    async def run_for(svc, hours, prices):
        async with trio.open_nursery() as n:
            n.start_soon(svc.run)
            n.start_soon(push_prices, svc, feed, prices, 600)
            await trio.sleep(hours * 3600)
            svc.shutdown()
            n.cancel_scope.cancel()

    origin = T0 + timedelta(hours=2)
    first = make_service(db, ex, feed, origin=origin)
    await run_for(first, 8, lambda now: ("95", "95.1"))  # until age 10 h: both in grace, nothing closes
    rows = await db.fetch("SELECT status FROM monitoring.aged_positions ORDER BY symbol")
    assert [r["status"] for r in rows] == ["grace_active", "grace_active"]
    assert ex.orders == []

    # A new process: same database and exchange, a clock that went on from there.
    second = make_service(db, ex, feed, origin=origin + timedelta(hours=8, seconds=1))
    assert second.detector.polls == 0
    await run_for(second, 20, lambda now: ("95", "95.1"))
    rows = {r["symbol"]: r for r in await db.fetch("SELECT * FROM monitoring.aged_positions")}
    assert rows[SYMBOL]["status"] == "closed" and rows[SYMBOL]["close_reason"] == "loss_acceptable"
    # the long (95 bid) needs 5 % tolerance: 10 h into progressive, age 21 h
    assert abs(rows[SYMBOL]["close_triggered_at"] - (T0 + timedelta(hours=21))) <= timedelta(minutes=10)
    assert rows["ETH/USDT:USDT"]["status"] == "progressive_active"  # a short at 2000 with the ask at 95.1…
    assert len([o for o in ex.orders if o.symbol == SYMBOL]) == 1
    assert len(await db.history(rows[SYMBOL]["id"])) == 3


async def test_failed_close_goes_to_error_and_is_retried_after_cooldown(mock_clock, mdb):
    db = mdb
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    ex.fail_next(RetryableError("503 from exchange", code="503"), n=4)
    feed = MemoryFeed("bybit")
    settings = Settings(sample_interval=timedelta(minutes=10), error_cooldown=timedelta(minutes=15))
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=4), settings=settings)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(push_prices, svc, feed, lambda now: ("101", "101.1"), 300)

        async def status_is(s):
            row = await aged_row(db)
            return row is not None and row["status"] == s
        await wait_for(lambda: status_is("error"), interval=2)
        err = await aged_row(db)
        await wait_for(lambda: status_is("closed"), interval=60)
        svc.shutdown()
        n.cancel_scope.cancel()
    row = await aged_row(db)
    assert err["close_attempts"] == 4 and "503" in err["last_error_message"]
    assert row["close_attempts"] == 5 and row["close_reason"] == "profitable"
    assert row["closed_at"] - err["last_close_attempt"] >= timedelta(minutes=15)
    assert len(ex.orders) == 1 and ex.orders[0].client_order_id.endswith("-5")
    history = [h["to_status"] for h in await db.history(row["id"])]
    assert history == ["grace_active", "error", "grace_active", "closed"]
    failed = await db.events(row["id"], "aged.close.failed")
    assert len(failed) == 1


async def test_vanished_position_is_closed_as_manual(mock_clock, mdb):
    db = mdb
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    feed = MemoryFeed("bybit")
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=4), poll_interval=30)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(push_prices, svc, feed, lambda now: ("90", "90.1"))
        await trio.sleep(600)
        ex.close_externally(SYMBOL)

        async def closed():
            return (await aged_row(db))["status"] == "closed"
        await wait_for(closed, interval=1)
        svc.shutdown()
        n.cancel_scope.cancel()
    row = await aged_row(db)
    assert row["close_reason"] == "manual" and ex.orders == []


async def test_trailing_stop_position_is_skipped(mock_clock, mdb):
    db = mdb
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    feed = MemoryFeed("bybit")
    pos = await db.upsert_open_position(exchange="bybit", symbol=SYMBOL, side="long", quantity=D(1),
                                        entry_price=D(100), opened_at=T0, trailing_activated=True, source="bot")
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=2), poll_interval=120)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(push_prices, svc, feed, lambda now: ("120", "120.1"), 300)
        await trio.sleep(3 * 3600)
        assert (await aged_row(db))["status"] == "skipped" and ex.orders == []
        await db.set_trailing(pos["id"], False)

        async def closed():
            return (await aged_row(db))["status"] == "closed"
        await wait_for(closed, interval=1)
        svc.shutdown()
        n.cancel_scope.cancel()
    assert len(ex.orders) == 1


async def test_database_down_then_up_loses_nothing(aio_loop, database_url, db):
    """Real clock: the proxy cuts real connections. Each step waits for its condition."""
    async with trio.open_nursery() as n:
        proxy = await n.start(DatabaseProxy(database_url).run)
        # generous asyncpg timeouts: a slow commit must not be mistaken for an outage
        pdb = await Database.connect(proxy.url, max_size=2, command_timeout=60, connect_timeout=60)
        ex = MemoryExchange(name="bybit")
        ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
        feed = MemoryFeed("bybit")
        svc = Service(pdb, {"bybit": ex}, {"bybit": feed},
                      replace(DEFAULTS, detector=DetectorConfig(poll_interval=0.2),
                              positions=Settings(sample_interval=timedelta(seconds=0))),
                      PolicyClock(T0 + timedelta(hours=4), speed=60.0))  # a real second is a policy minute
        svc.writer.retry_initial = 0.05
        svc.writer.retry_max = 0.5  # retries soon after the restore, however long the outage was
        sampled = []  # every price-check row the actor hands the writer
        submit = svc.writer.submit

        def spy(*items):
            sampled.extend(i for i in items if isinstance(i, op.AddEvent) and i.event_type == "price_check")
            submit(*items)
        svc.writer.submit = spy
        n.start_soon(svc.run)
        with within(60, "the aged position was detected and written"):
            while (row := await aged_row(db)) is None:
                await trio.sleep(0.05)
        # An actor loads its state from the database when it starts (a restarted one
        # falls back to its last known state, a new one has none): cut once it watches.
        await wait_until(lambda: svc.registry.is_watching(row["id"]) and svc.registry.state(row["id"]) is not None,
                         "the actor was watching the position with its state loaded")
        await proxy.cut()
        for i in range(20):  # ticks while the database is away: sampled checks pile up in the buffer
            before = len(sampled)
            feed.push(SYMBOL, bid=f"{95 + i / 10}", ask="101")
            await wait_until(lambda: len(sampled) > before, f"tick {i} during the outage was sampled")
        ex.set_quote(SYMBOL, "101", "101.1")
        feed.push(SYMBOL, bid="101", ask="101.1")  # and the close happens during the outage
        await wait_until(lambda: SYMBOL not in ex.positions, "the close order filled during the outage")
        await wait_until(lambda: not svc.writer.database_up, "the writer noticed the outage")
        assert svc.writer.depth > 0
        proxy.restore()
        with within(60, "the closed status reached the database after the restore"):
            while (await aged_row(db))["status"] != "closed":
                await trio.sleep(0.1)
        with within(60, "the writer flushed its buffer after the restore"):
            await svc.writer.wait_flushed()
        svc.shutdown()
        await pdb.close()
        n.cancel_scope.cancel()
    row = await aged_row(db)
    assert row["close_reason"] == "profitable" and len(ex.orders) == 1
    assert len(sampled) >= 20
    checks = await db.events(row["id"], "price_check")
    assert len(checks) >= 20  # every sampled check made during the outage was written afterwards
    [wal] = await db.close_orders(row["id"])
    assert wal["state"] == "filled"
    assert [h["to_status"] for h in await db.history(row["id"])] == ["grace_active", "closed"]


class CrashingFeed(MemoryFeed):
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        raise ConnectionError("exchange unreachable")


async def test_root_gives_up_with_exit_code_1_when_a_child_keeps_crashing(mock_clock, mdb, caplog):
    caplog.set_level("INFO")
    svc = Service(mdb, {"bybit": MemoryExchange(name="bybit")}, {"bybit": CrashingFeed("bybit")},
                  replace(DEFAULTS, detector=DetectorConfig(poll_interval=60)), PolicyClock(T0))
    with trio.fail_after(600):
        code = await svc.run()
    assert code == 1
    critical = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert critical and "feed:bybit" in critical[-1].getMessage()
    assert "ConnectionError: exchange unreachable" in critical[-1].getMessage()
    restarts = [r for r in caplog.records if "event=child_restarting" in r.getMessage()]
    assert len(restarts) == svc.config.supervision.root_intensity


async def test_a_detector_restarted_while_a_position_was_ageing_still_detects_it(mock_clock, mdb, monkeypatch):
    db = mdb
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    feed = MemoryFeed("bybit")
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=2), poll_interval=30)
    real = db.aged_position_for
    failures = []

    async def away_once(position_id):
        if not failures:  # the aging timer's first look: the database is away, the detector crashes
            failures.append(position_id)
            raise StorageUnavailable("ConnectionResetError: the database went away")
        return await real(position_id)
    monkeypatch.setattr(db, "aged_position_for", away_once)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        await wait_for(lambda: aged_row(db), interval=30)  # created once the position turns 3 h old
        assert failures and svc.root.children()["detector"].restarts == 1
        aged_id = (await aged_row(db))["id"]
        await wait_until(lambda: svc.is_watching(aged_id), "the aged position has its actor")
        svc.shutdown()
        n.cancel_scope.cancel()
