"""Account streams end to end: ``run.py live`` as a process, the simulator's private
streams (held to the exchanges' documented messages in
tests/test_simulator_private_conformance.py), ccxt's real clients and PostgreSQL.

The detector polls once at start and then only every hour, so everything after the
start is seen through the account stream — or, when the stream is down, through the
REST snapshot taken at once when it comes back. Conditions are awaited; nothing here
asserts a duration (the time from an exchange event to the book is in ``bench/``).
"""

from __future__ import annotations

import json
import socket
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from prometheus_client.parser import text_string_to_metric_families
import trio

from simulator.server import serve_simulator
from tests.test_account_stream_live import FrozenLink
from tests.test_episodes_live import Live

SYMBOL_ID, SYMBOL = "BTCUSDT", "BTC/USDT:USDT"
EXCHANGES = ["bybit", "binanceusdm"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(info, exchange: str, metrics_port: int, *, private_ws: str | None = None,
            max_age_hours: str = "1000") -> str:
    return f"""
[policy]
max_age_hours = {max_age_hours}
[manager]
poll_interval_seconds = 3600
[[exchanges]]
name = "{exchange}"
rest_url = "{info[exchange]['rest']}"
ws_url = "{info[exchange]['ws']}"
private_ws_url = "{private_ws or info[exchange]['private_ws']}"
api_key_env = "TEST_SIM_KEY"
api_secret_env = "TEST_SIM_SECRET"
[metrics]
port = {metrics_port}
"""


async def _get(port: int, path: str) -> str:
    def go():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                return r.read().decode()
        except OSError:
            return ""
    return await trio.to_thread.run_sync(go)


async def stream_healthy(port: int, exchange: str) -> None:
    with trio.fail_after(120):
        while True:
            body = await _get(port, "/health")
            # the instance's account named after the exchange, and that service's account stream
            service = json.loads(body).get("accounts", {}).get(exchange, {}) if body else {}
            if service.get("accounts", {}).get(exchange, {}).get("healthy"):
                return
            await trio.sleep(0.1)


def metric(text: str, name: str, labels: str = "") -> float:
    """The sample ``name`` whose labels include ``labels`` (``'source="stream"'``); 0 when absent.

    The instance labels every sample with its account as well, so the labels given need
    not be all of them.
    """
    wanted = dict(part.split("=", 1) for part in labels.split(",")) if labels else {}
    wanted = {k: v.strip('"') for k, v in wanted.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and wanted.items() <= sample.labels.items():
                return sample.value
    return 0.0


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_every_change_a_trading_bot_makes_is_followed_through_the_stream(aio_loop, db, database_url, tmp_path,
                                                                               exchange):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        st.ensure_market(exchange, SYMBOL_ID, D("100"))
        port = _free_port()
        async with Live(tmp_path, database_url, _config(sim.info(), exchange, port)) as live:
            await stream_healthy(port, exchange)
            t_open = datetime.now(timezone.utc)
            st.set_position(exchange, SYMBOL_ID, "long", "1", "100")  # opened
            [first] = await live.until("SELECT * FROM monitoring.episodes WHERE status='open'", what="the opening")
            st.set_position(exchange, SYMBOL_ID, "long", "2", "101")  # averaged into
            await live.until("SELECT 1 FROM monitoring.episodes WHERE id=$1 AND quantity=2 AND entry_price=101",
                             first["id"], what="the averaging")
            st.set_position(exchange, SYMBOL_ID, "long", "1.5", "101")  # reduced by hand
            await live.until("SELECT 1 FROM monitoring.episodes WHERE id=$1 AND quantity=1.5", first["id"],
                             what="the reduction")
            st.set_position(exchange, SYMBOL_ID, "short", "0.5", "99")  # flipped
            [short] = await live.until("SELECT * FROM monitoring.episodes WHERE status='open' AND side='short'",
                                       what="the flip")
            st.remove_position(exchange, SYMBOL_ID)  # closed by hand
            await live.until("SELECT 1 FROM monitoring.episodes WHERE id=$1 AND status='closed'", short["id"],
                             what="the manual close")
            t_again = datetime.now(timezone.utc)
            st.set_position(exchange, SYMBOL_ID, "long", "3", "98")  # opened again
            [again] = await live.until("SELECT * FROM monitoring.episodes WHERE status='open'", what="the re-entry")
            rows = await live.db.fetch("SELECT * FROM monitoring.episodes ORDER BY opened_at")
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    got = [(r["side"], r["status"], r["end_reason"], r["quantity"], r["opened_at_source"]) for r in rows]
    assert got[1:] == [("short", "closed", "flat", D(0), "stream"), ("long", "open", None, D(3), "stream")]
    # The first opening may be read by the detector's first poll (it runs once at start)
    # before the stream's report of it: then its time comes from the fill history.
    assert got[0][:4] == ("long", "closed", "flip", D(0)) and got[0][4] in ("stream", "fills")
    assert rows[0]["id"] == first["id"] and rows[2]["id"] == again["id"]
    ms = timedelta(milliseconds=1)  # the exchanges' times are in milliseconds
    assert t_open - ms <= rows[0]["opened_at"] < rows[1]["opened_at"] < t_again <= rows[2]["opened_at"] + ms
    assert st.accepted_orders(exchange) == []


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_close_is_checked_and_settled_through_the_stream(aio_loop, db, database_url, tmp_path, exchange):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        st.set_position(exchange, SYMBOL_ID, "long", "0.5", "100",
                        opened_at=datetime.now(timezone.utc) - timedelta(hours=5))
        st.set_price(exchange, SYMBOL_ID, bid=D("99"), ask=D("99.1"), last=D("99"))  # below breakeven
        port = _free_port()
        async with Live(tmp_path, database_url, _config(sim.info(), exchange, port, max_age_hours="3")) as live:
            [aged] = await live.until("SELECT * FROM monitoring.aged_positions WHERE status='grace_active'",
                                      what="the aged long in grace")
            await stream_healthy(port, exchange)
            st.set_price(exchange, SYMBOL_ID, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))  # above breakeven
            [closed] = await live.until("SELECT * FROM monitoring.aged_positions WHERE id=$1 AND status='closed'",
                                        aged["id"], what="the close")
            await live.until("SELECT 1 FROM monitoring.episodes WHERE id=$1 AND status='closed'",
                             aged["position_id"], what="the episode ended")
            text = await _get(port, "/metrics")
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    assert closed["close_reason"] == "profitable"
    stream_checks = metric(text, "aged_executor_position_checks_total", 'source="stream"')
    rest_checks = metric(text, "aged_executor_position_checks_total", 'source="rest"')
    if exchange == "bybit":
        assert stream_checks >= 1 and rest_checks == 0  # caught up: a ping's pong behind the data
    else:
        assert stream_checks == 0 and rest_checks >= 1  # Binance's stream cannot be proven caught up
    # Bybit's create answer has no status: the stream's order events settled the close.
    # Binance's answer to a MARKET order already says FILLED.
    settled = metric(text, "aged_executor_settled_by_stream_total")
    assert settled >= 1 if exchange == "bybit" else settled == 0
    orders = st.accepted_orders(exchange)
    assert len(orders) == 1 and orders[0].reduce_only and orders[0].qty == D("0.5")


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_what_happens_while_the_stream_is_down_is_seen_at_once_when_it_is_back(aio_loop, db, database_url,
                                                                                     tmp_path, exchange):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        st = sim.state
        st.ensure_market(exchange, SYMBOL_ID, D("100"))
        link = FrozenLink(sim.port)
        link_port = await nursery.start(link.run)
        private = sim.info()[exchange]["private_ws"].replace(f":{sim.port}/", f":{link_port}/")
        port = _free_port()
        async with Live(tmp_path, database_url, _config(sim.info(), exchange, port, private_ws=private)) as live:
            await stream_healthy(port, exchange)
            st.set_position(exchange, SYMBOL_ID, "long", "1", "100")
            [episode] = await live.until("SELECT * FROM monitoring.episodes WHERE status='open'", what="the opening")
            link.freeze()  # the path stalls: nothing arrives, not even a pong
            st.remove_position(exchange, SYMBOL_ID)  # closed by hand while the stream is down
            with trio.fail_after(120):
                while "account stream ended" not in live.log_path.read_text():
                    await trio.sleep(0.1)
            link.thaw()
            await live.until("SELECT 1 FROM monitoring.episodes WHERE id=$1 AND status='closed'", episode["id"],
                             what="the manual close, from the snapshot after the reconnect")
            text = await _get(port, "/metrics")
        nursery.cancel_scope.cancel()
    assert live.code == 0, live.log[-3000:]
    assert metric(text, "aged_account_stream_connects_total", f'exchange="{exchange}"') >= 2
