"""Operator commands end to end: ``run.py hold | release | close | override`` as
processes against ``run.py live`` (a process) on the exchange simulator, with ccxt's
real clients and PostgreSQL — and across a restart of ``run.py live``.

Conditions are awaited (a row, a log line), each with a generous ceiling; nothing here
asserts a duration.
"""

from __future__ import annotations

import getpass
import os
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import trio

from simulator.server import serve_simulator
from tests.test_episodes_live import ROOT, Live, _config

EXCHANGE = "bybit"
BTC_ID, BTC = "BTCUSDT", "BTC/USDT:USDT"
ETH_ID, ETH = "ETHUSDT", "ETH/USDT:USDT"
ACTOR = f"cli:{getpass.getuser()}"


async def cli(database_url, *args):
    """``run.py ARGS`` as a process; its CompletedProcess (text)."""
    return await trio.run_process([sys.executable, "run.py", *args], cwd=ROOT, capture_stdout=True,
                                  capture_stderr=True, check=False, env={**os.environ, "DATABASE_URL": database_url})


def text(out) -> tuple[str, str]:
    return out.stdout.decode(), out.stderr.decode()


async def applied(live, action_id):
    [row] = await live.until("SELECT * FROM monitoring.operator_actions WHERE id=$1 AND applied_at IS NOT NULL",
                             action_id, what=f"action {action_id} applied")
    return row


async def recorded(live, out) -> dict:
    stdout, stderr = text(out)
    assert out.returncode == 0, stderr
    assert stdout.startswith("recorded "), stdout
    action_id = int(stdout.split("#", 1)[1].split(":", 1)[0])
    return await applied(live, action_id)


async def actor_started(live, aged_id) -> None:
    """Wait until the log (a new one for each start) shows the position's actor started."""
    with trio.fail_after(120):
        while f"child_started child=position:{aged_id}" not in live.log_path.read_text():
            await trio.sleep(0.2)


async def test_hold_override_release_and_close_through_the_cli_against_live(aio_loop, db, database_url, tmp_path):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        five_hours_ago = datetime.now(UTC) - timedelta(hours=5)
        st.ensure_market(EXCHANGE, ETH_ID, D("100"))
        for symbol_id in (BTC_ID, ETH_ID):
            st.set_position(EXCHANGE, symbol_id, "long", "0.5", "100", opened_at=five_hours_ago)
            st.set_price(EXCHANGE, symbol_id, bid=D("99"), ask=D("99.1"), last=D("99"))  # grace, under water
        config = _config(sim.info(), EXCHANGE, "3")
        async with Live(tmp_path, database_url, config) as live:
            [btc] = await live.until("SELECT * FROM monitoring.aged_positions WHERE symbol=$1 AND "
                                     "status='grace_active'", BTC, what="BTC aged, in grace")
            [eth] = await live.until("SELECT * FROM monitoring.aged_positions WHERE symbol=$1 AND "
                                     "status='grace_active'", ETH, what="ETH aged, in grace")

            # Bad input: one line on stderr, exit 2, nothing stored.
            for args in (["hold", str(btc["id"]), "--hours", "0", "--reason", "x"],
                         ["hold", "not-an-id", "--hours", "1", "--reason", "x"],
                         ["override", BTC, "--exchange", EXCHANGE, "--set", "max_loss_percent=100"]):
                out = await cli(database_url, *args)
                stdout, stderr = text(out)
                assert out.returncode == 2 and len(stderr.strip().splitlines()) == 1 and stdout == "", stderr
            assert await live.db.fetchval("SELECT count(*) FROM monitoring.operator_actions") == 0

            hold = await recorded(live, await cli(database_url, "hold", str(btc["id"]), "--hours", "2",
                                                  "--reason", "funding at noon"))
            assert hold["outcome"].startswith("held until") and hold["actor"] == ACTOR
            st.set_price(EXCHANGE, BTC_ID, bid=D("101"), ask=D("101.1"), last=D("101"))  # above breakeven 100.2
            await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND last_checked_price=101",
                             btc["id"], what="the price above the target judged")
            await live.polls_after(datetime.now(UTC))
            assert st.accepted_orders(EXCHANGE) == []

        # A restart keeps the hold.
        async with Live(tmp_path, database_url, config) as live:
            await actor_started(live, btc["id"])
            st.set_price(EXCHANGE, BTC_ID, bid=D("103"), ask=D("103.1"), last=D("103"))
            await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND last_checked_price=103",
                             btc["id"], what="the price after the restart judged")
            await live.polls_after(datetime.now(UTC))
            assert st.accepted_orders(EXCHANGE) == []
            assert (await live.db.aged_position(btc["id"]))["status"] == "grace_active"

            # An override moves the target of the running actor: a commission of 0.5 % a side, breakeven 101.
            override = await recorded(live, await cli(database_url, "override", BTC, "--exchange", EXCHANGE,
                                                      "--set", "commission_percent=0.5", "--reason", "vip tier lost"))
            assert override["outcome"] == "applied to 1 position"
            await live.until("SELECT 1 FROM monitoring.aged_positions WHERE id=$1 AND target_price=101",
                             btc["id"], what="the new target")
            assert st.accepted_orders(EXCHANGE) == []

            release = await recorded(live, await cli(database_url, "release", str(btc["id"])))
            assert release["outcome"] == "released"
            [closed] = await live.until("SELECT * FROM monitoring.aged_positions WHERE id=$1 AND status='closed'",
                                        btc["id"], what="BTC closed after the release")
            assert closed["close_reason"] == "profitable"

            # Close now: a position under water, closed at the market with reason manual.
            close = await recorded(live, await cli(database_url, "close", str(eth["id"]), "--reason", "risk off"))
            assert close["outcome"] == "close sent"
            [eth_closed] = await live.until("SELECT * FROM monitoring.aged_positions WHERE id=$1 AND "
                                            "status='closed'", eth["id"], what="ETH closed now")
            assert eth_closed["close_reason"] == "manual" and eth_closed["close_price"] == D("99")
            out = await cli(database_url, "close", str(eth["id"]))
            assert out.returncode == 2 and "is closed" in text(out)[1]

            status = await cli(database_url, "status")
            assert status.returncode == 0
            actions = await live.db.actions()
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    orders = st.accepted_orders(EXCHANGE)
    assert sorted(o.symbol for o in orders) == [BTC_ID, ETH_ID] and all(o.reduce_only for o in orders)
    assert [(a["action"], a["actor"]) for a in reversed(actions)] == [
        ("hold", ACTOR), ("override", ACTOR), ("release", ACTOR), ("close", ACTOR)]
    assert all(a["applied_at"] is not None and a["outcome"] for a in actions)
