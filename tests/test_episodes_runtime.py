"""Episodes end to end on the in-memory exchange and a real PostgreSQL.

The trading bot acts between two looks of the detector: it closes and re-enters,
averages in, reduces by hand, flips. The exchange's fill history (scripted here as the
real one would show it) and its position list are the truth; the manager must follow
the episode, never the symbol. Rules: MockClock (virtual hours), real database, the
in-memory exchange with ``opened_at=None`` (no exchange-reported open time, as on
Binance and on Bybit without ``openTime``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import trio

from doubles.exchange import MemoryExchange
from exchanges.port import Fill
from tests.support import BOT_TABLE, MemoryFeed, make_service

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"
POLL = 300.0


async def wait_for(predicate, what: str, timeout=3600 * 60, interval=30.0):
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)


def trade(ex: MemoryExchange, at: datetime, side: str, qty: str, price: str, symbol: str = SYMBOL) -> None:
    fills = ex.fills.setdefault(symbol, [])
    fills.append(Fill(f"t{len(fills)}", at, side, D(qty), D(price)))


class Prices:
    """The book the feed and the exchange show; the test moves it."""

    def __init__(self, bid: str, ask: str):
        self.bid, self.ask = bid, ask

    def set(self, bid: str, ask: str) -> None:
        self.bid, self.ask = bid, ask

    async def run(self, ex: MemoryExchange, feed: MemoryFeed, every: float = 60.0) -> None:
        while True:
            for held in list(ex.positions) or [SYMBOL]:
                ex.set_quote(held, self.bid, self.ask, self.bid)
            feed.push(SYMBOL, bid=self.bid, ask=self.ask, last=self.bid)
            await trio.sleep(every)


@asynccontextmanager
async def running(mdb, ex: MemoryExchange, prices: Prices, *, hours: int):
    """The service on ``ex`` with its clock ``hours`` after T0, ``prices`` pushed every minute."""
    feed = MemoryFeed("bybit")
    svc = make_service(mdb, ex, feed, origin=T0 + timedelta(hours=hours), poll_interval=POLL)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(prices.run, ex, feed)
        yield svc, prices
        svc.shutdown()
        n.cancel_scope.cancel()


async def aged_rows(db):
    return await db.fetch("SELECT * FROM monitoring.aged_positions ORDER BY detected_at")


async def open_episode(db):
    rows = await db.fetch("SELECT * FROM monitoring.episodes WHERE status='open'")
    return rows[0] if rows else None


async def in_grace(db):
    rows = await aged_rows(db)
    return bool(rows) and rows[-1]["status"] == "grace_active"


def aged_long(ex: MemoryExchange, qty="1", entry="100") -> None:
    """A long opened at T0 (fill history says so), aged 3 h later, in grace until 11 h."""
    ex.set_position(SYMBOL, "long", qty, entry)
    trade(ex, T0, "buy", qty, entry)


async def test_reentry_between_two_looks_is_a_new_episode_that_starts_young(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    aged_long(ex)
    async with running(mdb, ex, Prices("99.5", "99.6"), hours=5) as (svc, prices):  # below breakeven (100.2)
        await wait_for(lambda: in_grace(mdb), "the first episode in grace")
        first = await open_episode(mdb)
        assert first["opened_at"] == T0 and first["opened_at_source"] == "fills"
        # Between two polls: closed by hand and opened again at 101.
        now = svc.clock.now()
        ex.close_externally(SYMBOL)
        trade(ex, now, "sell", "1", "99.5")
        ex.set_position(SYMBOL, "long", "1", "101")
        trade(ex, now + timedelta(seconds=1), "buy", "1", "101")
        prices.set("100.5", "100.6")  # above the OLD breakeven, below the new one (101.2)

        async def new_episode():
            e = await open_episode(mdb)
            return e is not None and e["id"] != first["id"]
        await wait_for(new_episode, "the re-entry seen as a new episode")
        second = await open_episode(mdb)
        assert second["opened_at"] == now + timedelta(seconds=1) and second["opened_at_source"] == "fills"
        old = (await mdb.fetch("SELECT * FROM monitoring.episodes WHERE id=$1", first["id"]))[0]
        assert old["status"] == "closed" and old["end_reason"] == "reentry"

        async def old_closed_as_manual():
            rows = await aged_rows(mdb)
            return rows[0]["status"] == "closed"
        await wait_for(old_closed_as_manual, "the old aged position ended")
        assert (await aged_rows(mdb))[0]["close_reason"] == "manual"
        await trio.sleep(3600)  # an hour at a price above the old breakeven: the fresh position is young
        assert ex.orders == []

        async def new_aged():
            return len(await aged_rows(mdb)) == 2
        await wait_for(new_aged, "the new episode aged")
        rows = await aged_rows(mdb)
        assert rows[1]["position_opened_at"] == second["opened_at"] and rows[1]["entry_price"] == D(101)
        assert rows[1]["grace_started_at"] == second["opened_at"] + timedelta(hours=3)
        await trio.sleep(600)
        assert ex.orders == []  # 100.5 is below the new breakeven
        prices.set("101.3", "101.4")

        async def closed_once():
            return len(ex.orders) >= 1 and (await aged_rows(mdb))[1]["status"] == "closed"
        await wait_for(closed_once, "the new episode closed at its own breakeven")
    assert len(ex.orders) == 1 and ex.orders[0].filled_qty == D(1)


async def test_averaging_in_keeps_the_episode_and_moves_breakeven(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    aged_long(ex)
    async with running(mdb, ex, Prices("99.5", "99.6"), hours=5) as (svc, prices):
        await wait_for(lambda: in_grace(mdb), "in grace")
        first = await open_episode(mdb)
        now = svc.clock.now()
        trade(ex, now, "buy", "1", "110")  # average entry 100 -> 105
        ex.set_position(SYMBOL, "long", "2", "105")
        prices.set("100.5", "100.6")

        async def moved():
            rows = await aged_rows(mdb)
            return rows[0]["entry_price"] == D(105)
        await wait_for(moved, "the aged position took the new entry")
        row = (await aged_rows(mdb))[0]
        assert row["breakeven_price"] == D("105.21") and row["quantity"] == D(2)
        assert (await open_episode(mdb))["id"] == first["id"]  # the same episode
        assert (await open_episode(mdb))["opened_at"] == T0
        [event] = await mdb.events(row["id"], "position.changed")
        assert event["event_metadata"]["old_entry_price"] == "100"
        assert event["event_metadata"]["new_entry_price"] == "105"
        await trio.sleep(3600)
        assert ex.orders == []  # 100.5 was a close before averaging in; now it is a loss in grace
        prices.set("105.3", "105.4")

        async def closed():
            return (await aged_rows(mdb))[0]["status"] == "closed"
        await wait_for(closed, "closed after the new breakeven")
    assert [o.filled_qty for o in ex.orders] == [D(2)]
    row = (await aged_rows(mdb))[0]
    assert row["close_reason"] in ("profitable", "breakeven") and row["actual_pnl"] > 0


async def test_flip_ends_the_episode_and_starts_the_other_side(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    aged_long(ex)
    async with running(mdb, ex, Prices("99.5", "99.6"), hours=5) as (svc, prices):
        await wait_for(lambda: in_grace(mdb), "in grace")
        now = svc.clock.now()
        trade(ex, now, "sell", "3", "99.5")
        ex.set_position(SYMBOL, "short", "2", "99.5")

        async def flipped():
            e = await open_episode(mdb)
            return e is not None and e["side"] == "short"
        await wait_for(flipped, "the flip seen")
        short = await open_episode(mdb)
        assert short["opened_at"] == now and short["opened_at_source"] == "fills"
        assert (await aged_rows(mdb))[0]["status"] == "closed"
        assert (await aged_rows(mdb))[0]["close_reason"] == "manual"
        await trio.sleep(3600)
    assert ex.orders == [] and len(await aged_rows(mdb)) == 1


async def test_partial_manual_reduction_keeps_the_rest_managed(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    aged_long(ex, qty="2")
    async with running(mdb, ex, Prices("99.5", "99.6"), hours=5) as (svc, prices):
        await wait_for(lambda: in_grace(mdb), "in grace")
        first = await open_episode(mdb)
        trade(ex, svc.clock.now(), "sell", "1", "99.5")
        ex.set_position(SYMBOL, "long", "1", "100")

        async def reduced():
            return (await aged_rows(mdb))[0]["quantity"] == D(1)
        await wait_for(reduced, "the reduction seen")
        assert (await open_episode(mdb))["id"] == first["id"]
        prices.set("100.3", "100.4")

        async def closed():
            return (await aged_rows(mdb))[0]["status"] == "closed"
        await wait_for(closed, "the rest closed")
    assert [o.filled_qty for o in ex.orders] == [D(1)]


class MissesOnce(MemoryExchange):
    """An exchange whose full position list leaves a position out once."""

    misses = 0

    async def fetch_positions(self, symbols=None):
        out = await super().fetch_positions(symbols)
        if symbols is None and self.misses > 0:
            self.misses -= 1
            return [p for p in out if p.symbol != SYMBOL]
        return out


async def test_one_snapshot_that_misses_a_position_does_not_end_its_episode(mock_clock, mdb, caplog):
    ex = MissesOnce(name="bybit")
    aged_long(ex)
    async with running(mdb, ex, Prices("99.5", "99.6"), hours=5) as (svc, prices):
        await wait_for(lambda: in_grace(mdb), "in grace")
        first = await open_episode(mdb)
        polls = svc.detector.polls
        ex.misses = 1

        async def two_more_polls():
            return svc.detector.polls >= polls + 2 and ex.misses == 0
        await wait_for(two_more_polls, "polls after the miss")
        assert (await open_episode(mdb))["id"] == first["id"]
        assert (await aged_rows(mdb))[0]["status"] == "grace_active"
        assert "a look-up shows it open" in caplog.text


async def test_an_entry_price_of_zero_is_skipped_and_the_rest_is_managed(mock_clock, mdb, caplog):
    ex = MemoryExchange(name="bybit")
    aged_long(ex)
    ex.set_position("ETH/USDT:USDT", "long", "1", "0")
    trade(ex, T0, "buy", "1", "0.0001", symbol="ETH/USDT:USDT")
    async with running(mdb, ex, Prices("99.5", "99.6"), hours=5) as (svc, prices):
        await wait_for(lambda: in_grace(mdb), "the good position in grace")
        polls = svc.detector.polls

        async def more_polls():
            return svc.detector.polls >= polls + 3
        await wait_for(more_polls, "the detector keeps polling")
        prices.set("100.3", "100.4")

        async def closed():
            return (await aged_rows(mdb))[0]["status"] == "closed"
        await wait_for(closed, "the good position closed")
    books = await mdb.fetch("SELECT symbol FROM monitoring.episodes")
    assert [b["symbol"] for b in books] == [SYMBOL]
    assert caplog.text.count("ETH/USDT:USDT: position skipped, entry price") == 1




async def test_the_bot_book_gives_the_open_time_and_is_closed_after_our_close(mock_clock, mdb):
    await mdb.execute("DROP TABLE IF EXISTS monitoring.positions")
    await mdb.execute(BOT_TABLE)
    try:
        # The fill history reaches back only 2 h (the bot's row says 4 h: the bot is trusted).
        await mdb.execute("INSERT INTO monitoring.positions (symbol, exchange, side, quantity, entry_price, opened_at) "
                          "VALUES ('BTCUSDT', 'bybit', 'long', 1, 100, $1)", T0 + timedelta(hours=1))
        ex = MemoryExchange(name="bybit")
        ex.set_position(SYMBOL, "long", "1", "100")
        trade(ex, T0 + timedelta(hours=3), "buy", "1", "100")
        async with running(mdb, ex, Prices("99.5", "99.6"), hours=5) as (svc, prices):
            await wait_for(lambda: in_grace(mdb), "aged by the bot's open time")
            e = await open_episode(mdb)
            assert e["opened_at"] == T0 + timedelta(hours=1) and e["opened_at_source"] == "bot"
            assert e["bot_position_id"] == 1
            # detected an hour late: the phase instants are the policy's, not the detection's
            aged = (await aged_rows(mdb))[0]
            assert aged["grace_started_at"] == T0 + timedelta(hours=4) and aged["detected_at"] >= T0 + timedelta(hours=5)
            prices.set("100.3", "100.4")

            async def closed():
                return (await aged_rows(mdb))[0]["status"] == "closed"
            await wait_for(closed, "closed at breakeven")

            async def bot_row_closed():
                r = (await mdb.fetch("SELECT * FROM monitoring.positions"))[0]
                return r["status"] == "closed"
            await wait_for(bot_row_closed, "the bot's row closed")
        bot = (await mdb.fetch("SELECT * FROM monitoring.positions"))[0]
        assert bot["exit_reason"] == "aged_grace" and bot["closed_at"] is not None
    finally:
        await mdb.execute("DROP TABLE IF EXISTS monitoring.positions")


async def test_detected_late_in_progressive_records_the_policy_instants(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    aged_long(ex)
    async with running(mdb, ex, Prices("90", "90.1"), hours=20) as (svc, prices):

        async def detected():
            return bool(await aged_rows(mdb))
        await wait_for(detected, "detected")
    row = (await aged_rows(mdb))[0]
    assert row["status"] == "progressive_active"
    assert row["grace_started_at"] == T0 + timedelta(hours=3)
    assert row["progressive_started_at"] == T0 + timedelta(hours=11)
