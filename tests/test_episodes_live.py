"""Episodes on the real stack: ``run.py live`` as a process, ccxt's real clients, the
simulator (whose fill history and position times follow the exchanges' documentation,
see tests/conformance/SOURCES.md) and PostgreSQL.

A trading bot closes and re-opens between two looks of the manager; on Bybit a symbol
traded weeks ago reports its old ``createdTime``. The manager must not take either for
an aged position. Conditions are awaited; nothing here asserts a duration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
import trio

from simulator.server import serve_simulator
from simulator.state import RejectRule
from storage.repository import Database
from tests.support import BOT_TABLE

ROOT = Path(__file__).resolve().parent.parent
SYMBOL_ID, SYMBOL = "BTCUSDT", "BTC/USDT:USDT"


def _config(info, exchange: str, max_age_hours: str, extra: str = "", manager: str = "", *,
            account_stream: bool = True) -> str:
    return f"""{extra}
[policy]
max_age_hours = {max_age_hours}
[manager]
poll_interval_seconds = 0.5
{manager}
[[exchanges]]
name = "{exchange}"
rest_url = "{info[exchange]['rest']}"
ws_url = "{info[exchange]['ws']}"
private_ws_url = "{info[exchange]['private_ws']}"
account_stream = {str(account_stream).lower()}
api_key_env = "TEST_SIM_KEY"
api_secret_env = "TEST_SIM_SECRET"
[metrics]
port = 0
"""


class Live:
    """``run.py live`` against the simulator, its log in a file."""

    def __init__(self, tmp_path: Path, database_url: str, config: str):
        self.path = tmp_path / "live.toml"
        self.path.write_text(config)
        self.log_path = tmp_path / "live.log"
        self.database_url = database_url

    async def __aenter__(self):
        self.log_file = open(self.log_path, "wb")
        env = {**os.environ, "TEST_SIM_KEY": "sim-key", "TEST_SIM_SECRET": "sim-secret",
               "DATABASE_URL": self.database_url}
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "run.py", "live", "--config", str(self.path)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=self.log_file)
        self.db = await Database.connect(self.database_url, max_size=1)
        return self

    async def __aexit__(self, *exc):
        await self.db.close()
        self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            self.code = await self.proc.wait()
        self.log_file.close()
        self.log = self.log_path.read_text()

    async def until(self, sql: str, *args, what: str, timeout: float = 120):
        with trio.fail_after(timeout):
            while True:
                rows = await self.db.fetch(sql, *args)
                if rows:
                    return rows
                await trio.sleep(0.2)

    async def polls_after(self, at: datetime, n: int = 3) -> None:
        """Wait until the detector has looked at the open episode ``n`` polls after ``at``."""
        await self.until("SELECT 1 FROM monitoring.episodes WHERE status='open' AND last_seen_at > $1",
                         at + timedelta(seconds=0.5 * n), what=f"{n} polls after {at}")


@pytest.mark.parametrize("stream", [False, True], ids=["rest", "stream"])
@pytest.mark.parametrize("exchange", ["bybit", "binanceusdm"])
async def test_reentry_between_two_polls_is_a_young_episode(aio_loop, db, database_url, tmp_path, exchange, stream):
    """REST polling alone tells the re-entry by the fill history; the account stream sees
    the flat and the opening as two changes."""
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        now = datetime.now(timezone.utc)
        st.set_position(exchange, SYMBOL_ID, "long", "0.5", "100", opened_at=now - timedelta(hours=5))
        st.set_price(exchange, SYMBOL_ID, bid=D("99"), ask=D("99.1"), last=D("99"))
        # aged after 36 s: the re-entry below ages while the test waits
        config = _config(sim.info(), exchange, "0.01", account_stream=stream)
        async with Live(tmp_path, database_url, config) as live:
            [old] = await live.until("SELECT * FROM monitoring.aged_positions WHERE status='grace_active'",
                                     what="the 5-hour-old long in grace")
            # Between two polls: closed by hand, opened again at 101 (no await between the two).
            t = datetime.now(timezone.utc)
            st.remove_position(exchange, SYMBOL_ID, price="99", at=t - timedelta(milliseconds=5))
            st.set_position(exchange, SYMBOL_ID, "long", "0.5", "101", opened_at=t)
            st.set_price(exchange, SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))  # > old breakeven
            await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND status='closed'", old["id"],
                             what="the old aged position ended")
            [ended] = await live.until("SELECT * FROM monitoring.episodes WHERE id=$1 AND status='closed'",
                                       old["position_id"], what="the old episode ended")
            [young] = await live.until("SELECT * FROM monitoring.episodes WHERE status='open'",
                                       what="the young episode")
            # The stream reports the flat and the opening as two changes; a poll that reads the
            # account after both (it runs every 0.5 s here) tells the re-entry by the fills.
            told = (ended["end_reason"], young["opened_at_source"])
            assert told in ([("flat", "stream"), ("reentry", "fills")] if stream else [("reentry", "fills")])
            assert abs((young["opened_at"] - t).total_seconds()) < 0.01  # the opening fill, not the first one
            await live.polls_after(datetime.now(timezone.utc))
            assert st.accepted_orders(exchange) == []  # the fresh position was not closed at the old breakeven
            # It ages 36 s after its own opening, into grace with its own breakeven (101.2).
            [new] = await live.until("SELECT * FROM monitoring.aged_positions WHERE id<>$1", old["id"],
                                     what="the new episode aged")
            assert new["position_opened_at"] == young["opened_at"] and new["entry_price"] == D(101)
            await live.polls_after(datetime.now(timezone.utc))
            assert st.accepted_orders(exchange) == []  # 100.5 is below the new breakeven
            st.set_price(exchange, SYMBOL_ID, bid=D("101.3"), ask=D("101.4"), last=D("101.3"))
            await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND status='closed'", new["id"],
                             what="the new episode closed at its own breakeven")
            [old_row] = await live.db.fetch("SELECT * FROM monitoring.aged_positions WHERE id=$1", old["id"])
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    assert old_row["close_reason"] == "manual"
    orders = st.accepted_orders(exchange)
    assert len(orders) == 1 and orders[0].reduce_only and orders[0].qty == D("0.5")


async def test_a_symbol_traded_weeks_ago_is_not_aged_on_bybit(aio_loop, db, database_url, tmp_path):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        now = datetime.now(timezone.utc)
        st.set_position("bybit", SYMBOL_ID, "long", "1", "100", opened_at=now - timedelta(days=20))
        st.remove_position("bybit", SYMBOL_ID, price="100", at=now - timedelta(days=19))
        st.set_position("bybit", SYMBOL_ID, "long", "0.5", "100", opened_at=now - timedelta(minutes=1))
        st.set_price("bybit", SYMBOL_ID, bid=D("99"), ask=D("99.1"), last=D("99"))
        async with Live(tmp_path, database_url, _config(sim.info(), "bybit", "3")) as live:
            [episode] = await live.until("SELECT * FROM monitoring.episodes", what="the episode")
            await live.polls_after(datetime.now(timezone.utc))
            assert await live.db.fetch("SELECT * FROM monitoring.aged_positions") == []
        nursery.cancel_scope.cancel()
    # Bybit's createdTime still says 20 days ago; the fills say one minute.
    assert abs((episode["opened_at"] - (now - timedelta(minutes=1))).total_seconds()) < 1
    assert episode["opened_at_source"] == "fills"
    assert live.code == 0, live.log[-3000:]




@pytest.mark.parametrize("update_bot_book", [True, False])
async def test_beside_the_trading_bots_book(aio_loop, db, database_url, tmp_path, update_bot_book):
    """The database already holds the bot's monitoring.positions, with rows of its own."""
    await db.execute("DROP TABLE IF EXISTS monitoring.positions")
    await db.execute(BOT_TABLE)
    now = datetime.now(timezone.utc)
    try:
        # The bot's own rows: one we manage (opened 5 h ago by the bot's clock), one long closed.
        await db.execute("INSERT INTO monitoring.positions (symbol, exchange, side, quantity, entry_price, opened_at, "
                         "status, closed_at, exit_reason) VALUES ('ETHUSDT', 'binance', 'short', 2, 3000, $1, "
                         "'closed', $1, 'take_profit')", now - timedelta(days=3))
        bot_id = await db.fetchval(
            "INSERT INTO monitoring.positions (symbol, exchange, side, quantity, entry_price, opened_at) "
            "VALUES ('BTCUSDT', 'binance', 'long', 0.5, 100, $1) RETURNING id", now - timedelta(hours=5))
        async with trio.open_nursery() as nursery:
            sim = await nursery.start(serve_simulator)
            st = sim.state
            # The exchange's history has only a recent fill: the bot's book is trusted first.
            st.set_position("binanceusdm", SYMBOL_ID, "long", "0.5", "100", opened_at=now - timedelta(minutes=2))
            st.set_price("binanceusdm", SYMBOL_ID, bid=D("99"), ask=D("99.1"), last=D("99"))
            extra = "" if update_bot_book else "[database]\nupdate_bot_book = false"
            async with Live(tmp_path, database_url, _config(sim.info(), "binanceusdm", "3", extra)) as live:
                [aged] = await live.until("SELECT * FROM monitoring.aged_positions", what="aged by the bot's time")
                [episode] = await live.db.fetch("SELECT * FROM monitoring.episodes")
                assert episode["opened_at_source"] == "bot" and episode["bot_position_id"] == bot_id
                st.set_price("binanceusdm", SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))
                await live.until("SELECT 1 FROM monitoring.aged_positions WHERE status='closed'", what="closed")
                if update_bot_book:
                    await live.until("SELECT 1 FROM monitoring.positions WHERE id=$1 AND status='closed'", bot_id,
                                     what="the bot's row closed")
                # the bot's row is written with the episode's end, in the same statement group
                await live.until("SELECT 1 FROM monitoring.episodes WHERE status='closed'", what="episode ended")
            nursery.cancel_scope.cancel()
        assert live.code == 0, live.log[-3000:]
        assert aged["position_opened_at"] == now - timedelta(hours=5)
        rows = {r["symbol"]: r for r in await db.fetch("SELECT * FROM monitoring.positions")}
        cols = [r["column_name"] for r in await db.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='monitoring' "
            "AND table_name='positions' ORDER BY ordinal_position")]
        assert cols == ["id", "symbol", "exchange", "side", "quantity", "entry_price", "status", "opened_at",
                        "trailing_activated", "closed_at", "exit_reason", "pnl"]  # never altered
        assert rows["ETHUSDT"]["exit_reason"] == "take_profit"  # the bot's other rows untouched
        if update_bot_book:
            assert rows["BTCUSDT"]["status"] == "closed" and rows["BTCUSDT"]["exit_reason"] == "aged_grace"
            assert rows["BTCUSDT"]["closed_at"] is not None
        else:
            assert rows["BTCUSDT"]["status"] == "active" and rows["BTCUSDT"]["exit_reason"] is None
    finally:
        await db.execute("DROP TABLE IF EXISTS monitoring.positions")


async def test_averaging_in_during_a_close_is_applied_before_anything_is_sent(aio_loop, db, database_url, tmp_path):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        now = datetime.now(timezone.utc)
        st.set_position("bybit", SYMBOL_ID, "long", "0.5", "100", opened_at=now - timedelta(hours=5))
        st.set_price("bybit", SYMBOL_ID, bid=D("99"), ask=D("99.1"), last=D("99"))
        # The first close order is refused (rate limit): the executor pauses 3 s before the next attempt.
        st.faults.add_reject(RejectRule(count=1, code="10006", exchange="bybit", message="Too many visits!"))
        config = _config(sim.info(), "bybit", "3", manager="retry_delays_seconds = [3, 3, 3]")
        async with Live(tmp_path, database_url, config) as live:
            [aged] = await live.until("SELECT * FROM monitoring.aged_positions WHERE status='grace_active'",
                                      what="in grace")
            st.set_price("bybit", SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))
            await live.until("SELECT 1 FROM monitoring.close_orders WHERE state='rejected'", what="the refused order")
            # While the close waits to try again, the bot averages in: 0.5 @ 100 -> 1.5 @ 105.
            st.set_position("bybit", SYMBOL_ID, "long", "1.5", "105")
            await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND entry_price=105", aged["id"],
                             what="the new entry applied", timeout=120)
            await live.polls_after(datetime.now(timezone.utc))
            assert [o for o in st.accepted_orders("bybit")] == []  # 100.5 is a loss at entry 105
            st.set_price("bybit", SYMBOL_ID, bid=D("105.3"), ask=D("105.4"), last=D("105.3"))
            await live.until("SELECT 1 FROM monitoring.aged_positions WHERE status='closed'", what="closed")
            [row] = await live.db.fetch("SELECT * FROM monitoring.aged_positions")
            [event] = await live.db.events(aged["id"], "position.changed")
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    orders = st.accepted_orders("bybit")
    assert len(orders) == 1 and orders[0].qty == D("1.5")
    assert row["close_reason"] in ("profitable", "breakeven") and row["actual_pnl"] > 0
    assert event["event_metadata"]["new_entry_price"] == "105"


async def _aged_in_grace(exchange, tmp_path, database_url, body, *, account_stream: bool = True):
    """An aged long (0.5 @ 100, opened 5 h ago) in grace, ``run.py live`` watching it; then ``body``."""
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        now = datetime.now(timezone.utc)
        st.set_position(exchange, SYMBOL_ID, "long", "0.5", "100", opened_at=now - timedelta(hours=5))
        st.set_price(exchange, SYMBOL_ID, bid=D("99"), ask=D("99.1"), last=D("99"))
        config = _config(sim.info(), exchange, "3", account_stream=account_stream)
        async with Live(tmp_path, database_url, config) as live:
            [aged] = await live.until("SELECT * FROM monitoring.aged_positions WHERE status='grace_active'",
                                      what="the 5-hour-old long in grace")
            await body(st, live, aged)
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    return st, live


@pytest.mark.parametrize("exchange", ["bybit", "binanceusdm"])
async def test_a_flip_ends_the_episode_and_the_short_starts_young(aio_loop, db, database_url, tmp_path, exchange):
    async def body(st, live, aged):
        t = datetime.now(timezone.utc)
        st.set_position(exchange, SYMBOL_ID, "short", "0.3", "99", opened_at=t)  # one sell of 0.8 through zero
        st.set_price(exchange, SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))
        await live.until("SELECT 1 FROM monitoring.episodes WHERE status='open' AND side='short'", what="the flip")
        [short] = await live.db.fetch("SELECT * FROM monitoring.episodes WHERE status='open'")
        # the account stream's change or the poll's fill history, whichever saw the flip first
        assert abs((short["opened_at"] - t).total_seconds()) < 0.01 and short["opened_at_source"] in ("fills", "stream")
        [old] = await live.until("SELECT * FROM monitoring.episodes WHERE id=$1 AND status='closed'",
                                 aged["position_id"], what="the long's episode ended")
        assert old["end_reason"] == "flip"
        await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND close_reason='manual'", aged["id"],
                         what="the long's aged position ended")
        await live.polls_after(datetime.now(timezone.utc))
        assert st.accepted_orders(exchange) == [] and len(await live.db.fetch(
            "SELECT 1 FROM monitoring.aged_positions")) == 1

    await _aged_in_grace(exchange, tmp_path, database_url, body)


@pytest.mark.parametrize("exchange", ["bybit", "binanceusdm"])
async def test_a_partial_manual_reduction_keeps_the_rest_managed(aio_loop, db, database_url, tmp_path, exchange):
    async def body(st, live, aged):
        st.set_position(exchange, SYMBOL_ID, "long", "0.2", "100", fill_price="99")  # 0.3 sold by hand
        await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND quantity=0.2", aged["id"],
                         what="the reduction applied")
        [episode] = await live.db.fetch("SELECT * FROM monitoring.episodes WHERE status='open'")
        assert episode["id"] == aged["position_id"]  # the same episode, its open time kept
        st.set_price(exchange, SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))
        await live.until("SELECT 1 FROM monitoring.aged_positions WHERE status='closed'", what="the rest closed")

    st, _ = await _aged_in_grace(exchange, tmp_path, database_url, body)
    orders = st.accepted_orders(exchange)
    assert len(orders) == 1 and orders[0].qty == D("0.2") and orders[0].reduce_only


@pytest.mark.parametrize("exchange", ["bybit", "binanceusdm"])
async def test_a_position_missing_from_one_list_keeps_its_episode(aio_loop, db, database_url, tmp_path, exchange):
    async def body(st, live, aged):
        st.faults.omit_from_position_list[(exchange, SYMBOL_ID)] = 1
        await live.polls_after(datetime.now(timezone.utc))
        assert st.faults.omit_from_position_list[(exchange, SYMBOL_ID)] == 0  # the fault was hit
        [episode] = await live.db.fetch("SELECT * FROM monitoring.episodes")
        assert episode["status"] == "open" and episode["id"] == aged["position_id"]
        [row] = await live.db.fetch("SELECT * FROM monitoring.aged_positions")
        assert row["status"] == "grace_active"

    _, live = await _aged_in_grace(exchange, tmp_path, database_url, body)
    assert "a look-up shows it open" in live.log


@pytest.mark.parametrize("exchange,field", [("bybit", "avgPrice"), ("binanceusdm", "entryPrice")])
async def test_a_row_with_entry_price_zero_is_skipped_and_the_rest_managed(aio_loop, db, database_url, tmp_path,
                                                                             exchange, field):
    async def body(st, live, aged):
        st.set_position(exchange, "ETHUSDT", "long", "1", "3000")
        st.faults.position_row_overrides[(exchange, "ETHUSDT")] = {field: "0"}
        await live.polls_after(datetime.now(timezone.utc), n=4)
        st.set_price(exchange, SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))
        await live.until("SELECT 1 FROM monitoring.aged_positions WHERE status='closed'", what="BTC closed")
        assert [r["symbol"] for r in await live.db.fetch("SELECT symbol FROM monitoring.episodes")] == [SYMBOL]

    # REST rows only: the account stream would report ETH's true entry price
    _, live = await _aged_in_grace(exchange, tmp_path, database_url, body, account_stream=False)
    assert live.log.count("position row for ETHUSDT skipped: entry price") == 1
    assert "Traceback" not in live.log
