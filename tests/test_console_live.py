"""The console's API against ``run.py live`` (a process: an instance holding the
account's lease) on the simulator: a hold, an override, a release and a force-close
each go in over HTTP with the console's token, are recorded with who and why, and are
obeyed by the running service; bad input gets a clear 4xx and changes nothing.
(The same actions through the CLI: tests/test_operator_cli_e2e.py; through the page in
a real browser: tests/test_console_browser.py.)"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import trio

from simulator.server import serve_simulator
from tests.http_client import request
from tests.test_alerts import Receiver
from tests.test_episodes_live import Live, _config

EXCHANGE, SYMBOL_ID, SYMBOL = "bybit", "BTCUSDT", "BTC/USDT:USDT"
TOKEN = "console-token-for-this-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def call(port: int, method: str, path: str, body=None, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, payload = await request(port, method, path, body, headers)
    return status, json.loads(payload) if payload else None


async def test_hold_override_release_and_close_through_the_api_of_a_live_instance(aio_loop, db, database_url,
                                                                                  tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CONSOLE_TOKEN", TOKEN)
    port = _free_port()
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        rx = await nursery.start(Receiver().run)  # the trader's webhook: [alerts] notify, the defaults
        monkeypatch.setenv("TEST_WEBHOOK_URL", rx.url())
        st = sim.state
        st.set_position(EXCHANGE, SYMBOL_ID, "long", "0.5", "100", opened_at=datetime.now(UTC) - timedelta(hours=5))
        st.set_price(EXCHANGE, SYMBOL_ID, bid=D("99"), ask=D("99.1"), last=D("99"))  # grace, under water
        config = _config(sim.info(), EXCHANGE, "3", extra='[console]\ntoken_env = "TEST_CONSOLE_TOKEN"\n'
                                                          '[alerts]\nwebhook_url_env = "TEST_WEBHOOK_URL"\n')
        config = config.replace("[metrics]\nport = 0", f"[metrics]\nport = {port}")
        async with Live(tmp_path, database_url, config) as live:
            [aged] = await live.until("SELECT * FROM monitoring.aged_positions WHERE status='grace_active'",
                                      what="the aged long in grace")
            aged_id = str(aged["id"])

            async def listed():
                status, body = await call(port, "GET", "/api/positions", token=None)
                return status == 200 and [p for p in body if p["id"] == aged_id]
            with trio.fail_after(120):
                while not await listed():
                    await trio.sleep(0.2)

            # Bad input: a clear 4xx each, nothing stored.
            assert (await call(port, "POST", f"/api/positions/{aged_id}/hold", {"hours": 2, "reason": "x"},
                               token=None))[0] == 401
            assert (await call(port, "POST", f"/api/positions/{aged_id}/hold", {"hours": 2, "reason": "x"},
                               token="wrong"))[0] == 401
            status, body = await call(port, "POST", f"/api/positions/{aged_id}/hold", {"hours": 0, "reason": "x"})
            assert status == 400 and "hours" in body["error"]
            status, body = await call(port, "POST", "/api/positions/00000000-0000-0000-0000-000000000000/close", {})
            assert status == 404
            status, body = await call(port, "POST", "/api/overrides",
                                      {"exchange": EXCHANGE, "symbol": SYMBOL, "settings": {"max_loss_percent": 1000}})
            assert status == 400 and "max_loss_percent" in body["error"]
            assert await live.db.fetch("SELECT * FROM monitoring.operator_actions") == []

            # A hold: the price crosses the target and nothing closes.
            status, body = await call(port, "POST", f"/api/positions/{aged_id}/hold",
                                      {"hours": 2, "reason": "funding in an hour"})
            assert status == 200, body
            [held] = await live.until("SELECT * FROM monitoring.operator_actions WHERE id=$1 AND applied_at IS NOT NULL",
                                      body["action"]["id"], what="the hold applied")
            assert held["outcome"].startswith("held until") and held["actor"].startswith("api")
            assert held["reason"] == "funding in an hour"
            st.set_price(EXCHANGE, SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))  # above breakeven
            status, shown = await call(port, "GET", f"/api/positions/{aged_id}", token=None)
            assert status == 200 and shown["hold_until"] is not None and shown["actions"][0]["action"] == "hold"

            # An override: a wider allowance for the symbol reaches the running actor.
            status, body = await call(port, "POST", "/api/overrides",
                                      {"exchange": EXCHANGE, "symbol": SYMBOL, "settings": {"max_loss_percent": 20},
                                       "reason": "volatile"})
            assert status == 200, body
            [over] = await live.until("SELECT * FROM monitoring.operator_actions WHERE id=$1 AND applied_at IS NOT NULL",
                                      body["action"]["id"], what="the override applied")
            assert over["outcome"] == "applied to 1 position"
            assert st.accepted_orders(EXCHANGE) == []  # still held

            # A release: the price is already good, so it closes.
            status, body = await call(port, "POST", f"/api/positions/{aged_id}/release", {"reason": "done"})
            assert status == 200, body
            [closed] = await live.until("SELECT * FROM monitoring.aged_positions WHERE id=$1 AND status='closed'",
                                        aged["id"], what="the close after the release")
            assert closed["close_reason"] in ("profitable", "breakeven")

            # A force-close of another position: closed now, reason manual; again: a clear no.
            st.set_position(EXCHANGE, "ETHUSDT", "long", "0.5", "100",
                            opened_at=datetime.now(UTC) - timedelta(hours=5))
            st.set_price(EXCHANGE, "ETHUSDT", bid=D("99"), ask=D("99.1"), last=D("99"))
            [eth] = await live.until("SELECT * FROM monitoring.aged_positions WHERE symbol='ETH/USDT:USDT' "
                                     "AND status='grace_active'", what="ETH aged")
            status, body = await call(port, "POST", f"/api/positions/{eth['id']}/close", {"reason": "desk says"})
            assert status == 202, body
            [manual] = await live.until("SELECT * FROM monitoring.aged_positions WHERE id=$1 AND status='closed'",
                                        eth["id"], what="the force-close")
            assert manual["close_reason"] == "manual"
            status, body = await call(port, "POST", f"/api/positions/{eth['id']}/close", {})
            assert status == 409 and "closed" in body["error"]
            history = await live.db.fetch("SELECT action, actor, outcome FROM monitoring.operator_actions ORDER BY id")

            def announced():
                return [json.loads(r["body"]) for r in rx.requests]
            with trio.fail_after(60):
                while sum(a["type"] == "aged.close.completed" for a in announced()) < 2:
                    await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    assert [h["action"] for h in history] == ["hold", "override", "release", "close"]
    assert all(h["actor"].startswith("api") and h["outcome"] for h in history)
    assert len(st.accepted_orders(EXCHANGE)) == 2
    kinds = [a["type"] for a in announced()]
    assert kinds.count("aged.operator.action") == 4, kinds  # hold, override, release, close
    closes = {a["symbol"]: a["data"] for a in announced() if a["type"] == "aged.close.completed"}
    assert closes[SYMBOL]["side"] == "long" and closes[SYMBOL]["close_reason"] in ("profitable", "breakeven")
    assert closes["ETH/USDT:USDT"]["close_reason"] == "manual" and "pnl" in closes["ETH/USDT:USDT"]
