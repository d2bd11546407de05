"""The simulator's admin API (``/_sim``) over real HTTP, plus raw signed exchange calls.

Rules: loopback only (127.0.0.1), port 0 for every server, real clock (real sockets).
The HTTP client is the standard library's ``urllib`` run in a worker thread, so these
tests depend on nothing but the simulator; signatures are computed here by hand,
which also checks the wire protocol independently of ccxt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from decimal import Decimal as D
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

import pytest
import trio
import trio_websocket

from simulator.server import serve_simulator
from tests.support import within

ROOT = Path(__file__).resolve().parent.parent


async def http(method: str, url: str, body=None, *, raw: bytes | None = None, headers: dict | None = None):
    """(status, decoded JSON body or text) — never raises on HTTP errors."""

    def go():
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode()

    return await trio.to_thread.run_sync(go)


@pytest.fixture
async def sim(nursery):
    return await nursery.start(partial(serve_simulator, seed=3, tick_interval=None))


def bybit_signed_post(base: str, path: str, body: dict, key="sim-key", secret="sim-secret"):
    payload = json.dumps(body)
    ts = str(int(time.time() * 1000))
    sign = hmac.new(secret.encode(), (ts + key + "5000" + payload).encode(), hashlib.sha256).hexdigest()
    headers = {"X-BAPI-API-KEY": key, "X-BAPI-TIMESTAMP": ts, "X-BAPI-RECV-WINDOW": "5000", "X-BAPI-SIGN": sign}
    return http("POST", base + "/bybit" + path, raw=payload.encode(), headers=headers)


def binance_signed(method: str, base: str, path: str, params: dict, key="sim-key", secret="sim-secret"):
    q = urlencode({**params, "timestamp": int(time.time() * 1000), "recvWindow": 5000})
    q += "&signature=" + hmac.new(secret.encode(), q.encode(), hashlib.sha256).hexdigest()
    headers = {"X-MBX-APIKEY": key, "Content-Type": "application/x-www-form-urlencoded"}
    if method == "POST":
        return http("POST", base + "/binance" + path, raw=q.encode(), headers=headers)
    return http(method, base + "/binance" + path + "?" + q, headers=headers)


# ---------------------------------------------------------------------------- tests


async def test_info_lists_rest_and_ws_urls(sim):
    status, info = await http("GET", sim.admin_url + "/info")
    assert status == 200 and info == sim.info()
    port = sim.port
    assert info == {
        "bybit": {"rest": f"http://127.0.0.1:{port}/bybit", "ws": f"ws://127.0.0.1:{port}/bybit/v5/public/linear",
                  "private_ws": f"ws://127.0.0.1:{port}/bybit/v5/private"},
        "binanceusdm": {"rest": f"http://127.0.0.1:{port}/binance", "ws": f"ws://127.0.0.1:{port}/binance/ws",
                        "private_ws": f"ws://127.0.0.1:{port}/binance/ws"},
    }


async def test_positions_create_replace_list_and_clear(sim):
    url = sim.admin_url + "/positions"
    s, p = await http("POST", url, {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "0.5",
                                    "entry_price": "60000", "opened_at": "2026-03-01T10:00:00Z"})
    assert s == 200
    assert (p["symbol"], p["unified_symbol"], p["side"], p["qty"], p["entry_price"], p["opened_at"]) == (
        "BTCUSDT", "BTC/USDT:USDT", "long", "0.5", "60000", "2026-03-01T10:00:00.000Z")
    # unified symbol, numbers as JSON numbers; the other side is a flip: one fill through zero
    s, p = await http("POST", url, {"exchange": "bybit", "symbol": "BTC/USDT:USDT", "side": "short", "qty": 0.25,
                                    "entry_price": 61000.5})
    assert s == 200 and (p["side"], p["qty"], p["entry_price"]) == ("short", "0.25", "61000.5")
    assert [(f["side"], f["qty"], f["price"], f["opens_episode"]) for f in p["fills"]] == [
        ("sell", "0.75", "61000.5", True)]
    assert p["first_opened_at"] == "2026-03-01T10:00:00.000Z" and p["opened_at"] != p["first_opened_at"]
    await http("POST", url, {"exchange": "binance", "symbol": "ethusdt", "side": "long", "qty": "3",
                             "entry_price": "3000", "opened_at": "2026-03-01T12:00:00+02:00"})
    s, lst = await http("GET", url)
    assert s == 200 and [(x["exchange"], x["symbol"], x["side"], x["qty"]) for x in lst] == [
        ("bybit", "BTCUSDT", "short", "0.25"), ("binanceusdm", "ETHUSDT", "long", "3")]
    assert lst[1]["opened_at"] == "2026-03-01T10:00:00.000Z"
    assert sim.state.position("binanceusdm", "ETHUSDT").opened_at == datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    s, only = await http("GET", url + "?exchange=binanceusdm")
    assert [x["symbol"] for x in only] == ["ETHUSDT"]

    s, r = await http("DELETE", url + "?exchange=bybit&symbol=BTCUSDT")
    assert s == 200 and r == {"removed": 1}
    s, r = await http("DELETE", url)
    assert s == 200 and r == {"removed": 1} and sim.state.positions == {}


async def test_an_unknown_symbol_becomes_a_market(sim):
    s, p = await http("POST", sim.admin_url + "/positions", {
        "exchange": "bybit", "symbol": "PEPE/USDT:USDT", "side": "long", "qty": "1500000", "entry_price": "0.00001234"})
    assert s == 200 and p["symbol"] == "PEPEUSDT"
    m = sim.state.market("bybit", "PEPEUSDT")
    assert m.tick_size == D("1E-9") and m.qty_step == D("1")
    q = sim.state.quote("bybit", "PEPEUSDT")
    assert q.bid < q.ask and q.bid <= D("0.00001234") <= q.ask
    # the exchange lists it now
    s, r = await http("GET", sim.base_url + "/bybit/v5/market/instruments-info?category=linear&symbol=PEPEUSDT")
    assert r["retCode"] == 0 and r["result"]["list"][0]["priceFilter"]["tickSize"] == "0.000000001"
    assert "PEPEUSDT" not in sim.state.markets("binanceusdm")
    # a fractional quantity on a new market gets a lot size that fits it
    await http("POST", sim.admin_url + "/positions", {
        "exchange": "binanceusdm", "symbol": "WIFUSDT", "side": "short", "qty": "12.5", "entry_price": "2.345"})
    assert sim.state.market("binanceusdm", "WIFUSDT").qty_step == D("0.1")


async def test_prices_hold_step_and_release(sim):
    url = sim.admin_url + "/prices"
    s, q = await http("POST", url, {"exchange": "bybit", "symbol": "ETHUSDT", "bid": "3100.00", "ask": "3100.10"})
    assert s == 200 and (D(q["bid"]), D(q["ask"]), q["held"]) == (D("3100"), D("3100.1"), True)
    assert D("3100") <= D(q["last"]) <= D("3100.1")
    before = sim.state.quote("binanceusdm", "ETHUSDT")
    s, r = await http("POST", sim.admin_url + "/step", {"n": 5})
    assert s == 200 and r["steps"] == 5
    held = sim.state.quote("bybit", "ETHUSDT")
    assert (held.bid, held.ask) == (D("3100.00"), D("3100.10"))  # held
    assert sim.state.quote("binanceusdm", "ETHUSDT") != before  # the other one walked
    s, q = await http("POST", url, {"exchange": "bybit", "symbol": "ETHUSDT", "release": True})
    assert s == 200 and q["held"] is False
    await http("POST", sim.admin_url + "/step", {"n": 5})
    assert sim.state.quote("bybit", "ETHUSDT").bid != D("3100.00")
    # only last given: bid/ask derived around it with the market's spread
    s, q = await http("POST", url, {"exchange": "binanceusdm", "symbol": "BTCUSDT", "last": "50000"})
    assert s == 200 and D(q["bid"]) <= D("50000") < D(q["ask"])
    # walk settings
    s, q = await http("POST", url, {"exchange": "bybit", "symbol": "SOLUSDT", "volatility": 0.01, "spread_bps": "5"})
    assert s == 200 and sim.state.market("bybit", "SOLUSDT").volatility == 0.01
    s, lst = await http("GET", url)
    assert s == 200 and {(x["exchange"], x["symbol"]) for x in lst} >= {("bybit", "BTCUSDT"), ("binanceusdm", "DOGEUSDT")}
    # the REST ticker shows the admin price
    await http("POST", url, {"exchange": "bybit", "symbol": "BTCUSDT", "bid": "64000.0", "ask": "64000.2", "last": "64000.1"})
    s, t = await http("GET", sim.base_url + "/bybit/v5/market/tickers?category=linear&symbol=BTCUSDT")
    row = t["result"]["list"][0]
    assert (row["bid1Price"], row["ask1Price"], row["lastPrice"]) == ("64000.0", "64000.2", "64000.1")


async def test_price_listeners_see_admin_and_walk_changes(sim):
    seen = []
    unsubscribe = sim.state.add_price_listener(lambda ex, sid, q: seen.append((ex, sid, q.bid)))
    await http("POST", sim.admin_url + "/prices", {"exchange": "bybit", "symbol": "XRPUSDT", "bid": "0.6000", "ask": "0.6001"})
    assert seen == [("bybit", "XRPUSDT", D("0.6000"))]
    await http("POST", sim.admin_url + "/step", {})
    assert len(seen) == 1 + 2 * 5 - 1  # every market of both exchanges but the held one
    unsubscribe()
    await http("POST", sim.admin_url + "/step", {})
    assert len(seen) == 10


async def test_faults_set_show_and_clear(sim):
    url = sim.admin_url + "/faults"
    st = sim.state
    st.set_position("bybit", "BTCUSDT", "long", "1", "60000")
    s, f = await http("POST", url, {
        "reject_next": {"count": 2, "code": 110007, "exchange": "bybit"},
        "http_5xx": 3,
        "rate_limit_429": {"count": 1, "exchange": "binanceusdm"},
        "drop_reply": 1,
        "partial_fill_ratio": "0.5",
        "binance_market_new": True,
    })
    assert s == 200
    assert f["reject_next"] == [{"count": 2, "code": "110007", "exchange": "bybit", "message": None}]
    assert f["http_5xx"] == [{"count": 3, "exchange": None}]
    assert f["rate_limit_429"] == [{"count": 1, "exchange": "binanceusdm"}]
    assert f["drop_reply"] == [{"count": 1, "exchange": None}]
    assert f["partial_fill_ratio"] == "0.5" and f["binance_market_new"] is True
    s, again = await http("GET", url)
    assert again == f
    # a Bybit position closed behind the service's back
    s, f = await http("POST", url, {"close_position": {"exchange": "bybit", "symbol": "BTC/USDT:USDT"}})
    assert s == 200 and st.position("bybit", "BTCUSDT") is None
    s, f = await http("DELETE", url)
    assert s == 200 and f["reject_next"] == [] and f["http_5xx"] == [] and f["partial_fill_ratio"] is None
    assert st.faults.partial_fill_ratio is None and st.faults.binance_market_new is False


async def test_ws_faults_reach_the_stream_hub(sim):
    url = sim.admin_url + "/faults"
    hub = sim.hub
    assert hub is not None
    s, f = await http("POST", url, {"ws": "silence", "exchange": "bybit"})
    assert s == 200 and f["ws"] == {"bybit": "silence"}
    assert hub.is_silenced("bybit") and not hub.is_silenced("binanceusdm")
    await http("POST", url, {"ws": "resume"})
    assert not hub.is_silenced("bybit")

    # drop: a live subscriber is cut off
    async with trio_websocket.open_websocket_url(sim.info()["bybit"]["ws"]) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "req_id": "1", "args": ["tickers.BTCUSDT"]}))
        with within(60, "the subscription was answered"):
            first = json.loads(await ws.get_message())
            assert first.get("success") is True or first.get("topic") == "tickers.BTCUSDT"
        s, f = await http("POST", url, {"ws": "drop", "exchange": "bybit"})
        assert s == 200 and f["ws"]["bybit"] == "drop"
        with within(60, "the dropped connection was closed"), pytest.raises(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()


async def test_orders_log_records_raw_signed_orders_in_arrival_order(sim):
    st = sim.state
    st.set_position("bybit", "BTCUSDT", "long", "1", "60000")
    st.set_position("binanceusdm", "ETHUSDT", "short", "2", "3000")
    st.set_price("bybit", "BTCUSDT", bid=D("60500.0"), ask=D("60500.1"))
    st.set_price("binanceusdm", "ETHUSDT", bid=D("2999.00"), ask=D("2999.01"))

    s, r = await bybit_signed_post(sim.base_url, "/v5/order/create", {
        "category": "linear", "symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.4",
        "reduceOnly": True, "orderLinkId": "raw-1"})
    assert s == 200 and r["retCode"] == 0 and r["result"]["orderLinkId"] == "raw-1"
    s, r = await bybit_signed_post(sim.base_url, "/v5/order/create", {
        "category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.4",
        "reduceOnly": True, "orderLinkId": "raw-2"})
    assert s == 200 and r["retCode"] == 110017
    s, r = await binance_signed("POST", sim.base_url, "/fapi/v1/order", {
        "symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "IOC", "quantity": "2",
        "price": "3000.00", "reduceOnly": "true", "newClientOrderId": "raw-3", "newOrderRespType": "RESULT"})
    assert s == 200 and (r["status"], r["executedQty"], r["avgPrice"]) == ("FILLED", "2.000", "2999.01")
    s, r = await binance_signed("GET", sim.base_url, "/fapi/v1/order", {"symbol": "ETHUSDT", "origClientOrderId": "raw-3"})
    assert s == 200 and r["status"] == "FILLED" and r["clientOrderId"] == "raw-3"
    s, r = await binance_signed("GET", sim.base_url, "/fapi/v1/order", {"symbol": "ETHUSDT", "origClientOrderId": "nope"})
    assert s == 400 and r == {"code": -2013, "msg": "Order does not exist."}

    s, log = await http("GET", sim.admin_url + "/orders")
    assert s == 200
    keys = {"exchange", "symbol", "side", "type", "qty", "price", "time_in_force", "reduce_only", "client_order_id",
            "order_id", "status", "filled_qty", "avg_price", "reject_code", "time"}
    assert all(keys <= set(rec) for rec in log)
    assert [(x["exchange"], x["client_order_id"], x["side"], x["type"], x["status"], x["filled_qty"], x["avg_price"],
             x["reject_code"]) for x in log] == [
        ("bybit", "raw-1", "sell", "market", "filled", "0.4", "60500.0", None),
        ("bybit", "raw-2", "buy", "market", "rejected", "0", None, "110017"),
        ("binanceusdm", "raw-3", "buy", "limit", "filled", "2", "2999.01", None),
    ]
    assert log[2]["price"] == "3000.00" and log[2]["time_in_force"] == "IOC" and log[2]["reduce_only"] is True
    assert st.position("bybit", "BTCUSDT").qty == D("0.6") and st.position("binanceusdm", "ETHUSDT") is None
    s, only = await http("GET", sim.admin_url + "/orders?exchange=binanceusdm")
    assert [x["client_order_id"] for x in only] == ["raw-3"]
    await http("DELETE", sim.admin_url + "/orders")
    assert (await http("GET", sim.admin_url + "/orders"))[1] == []


async def test_raw_signature_checks(sim):
    body = {"category": "linear", "symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.1"}
    s, r = await bybit_signed_post(sim.base_url, "/v5/order/create", body, secret="wrong")
    assert s == 200 and r["retCode"] == 10004
    s, r = await bybit_signed_post(sim.base_url, "/v5/order/create", body, key="nobody")
    assert r["retCode"] == 10003
    s, r = await binance_signed("GET", sim.base_url, "/fapi/v3/positionRisk", {}, secret="wrong")
    assert (s, r["code"]) == (400, -1022)
    s, r = await binance_signed("GET", sim.base_url, "/fapi/v3/positionRisk", {}, key="nobody")
    assert (s, r["code"]) == (401, -2015)
    s, r = await binance_signed("GET", sim.base_url, "/fapi/v3/positionRisk", {})
    assert (s, r) == (200, [])
    # stale timestamp
    q = urlencode({"timestamp": int(time.time() * 1000) - 60_000, "recvWindow": 5000})
    q += "&signature=" + hmac.new(b"sim-secret", q.encode(), hashlib.sha256).hexdigest()
    s, r = await http("GET", sim.base_url + "/binance/fapi/v3/positionRisk?" + q, headers={"X-MBX-APIKEY": "sim-key"})
    assert (s, r["code"]) == (400, -1021)
    assert sim.state.orders == []


BAD = [
    ("POST", "/positions", b"{not json"),
    ("POST", "/positions", b"[1, 2]"),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "1"}),
    ("POST", "/positions", {"exchange": "kraken", "symbol": "BTCUSDT", "side": "long", "qty": "1", "entry_price": "1"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTC/EUR", "side": "long", "qty": "1", "entry_price": "1"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "up", "qty": "1", "entry_price": "1"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "-1", "entry_price": "1"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "abc", "entry_price": "1"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "NaN", "entry_price": "1"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "0.0001", "entry_price": "1"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "1", "entry_price": "1",
                            "opened_at": "yesterday"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "1", "entry_price": "1",
                            "colour": "red"}),
    ("POST", "/positions", {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": True, "entry_price": "1"}),
    ("DELETE", "/positions?symbol=BTCUSDT", None),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "BTCUSDT", "bid": "70000.0", "ask": "69000.0"}),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "BTCUSDT", "bid": "70000.05"}),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "BTCUSDT", "bid": "-5"}),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "BTCUSDT"}),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "BTCUSDT", "release": "yes"}),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "BTCUSDT", "bid": "1.0", "release": True}),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "BTCUSDT", "volatility": 5}),
    ("POST", "/prices", {"exchange": "bybit", "symbol": "NEWUSDT"}),
    ("POST", "/prices", {"symbol": "NEWUSDT", "bid": "1.0"}),
    ("POST", "/faults", {}),
    ("POST", "/faults", {"explode": 1}),
    ("POST", "/faults", {"http_5xx": -1}),
    ("POST", "/faults", {"http_5xx": "3"}),
    ("POST", "/faults", {"drop_reply": {"count": 1, "exchange": "ftx"}}),
    ("POST", "/faults", {"reject_next": {"count": 1, "code": "abc"}}),
    ("POST", "/faults", {"reject_next": {"count": 1, "colour": 1}}),
    ("POST", "/faults", {"partial_fill_ratio": "1.5"}),
    ("POST", "/faults", {"partial_fill_ratio": "half"}),
    ("POST", "/faults", {"ws": "explode"}),
    ("POST", "/faults", {"close_position": {"exchange": "bybit"}}),
    ("POST", "/faults", {"close_position": {"exchange": "bybit", "symbol": "DOGEUSDT"}}),
    ("POST", "/faults", {"http_5xx": 1, "partial_fill_ratio": "2"}),  # all-or-nothing
    ("POST", "/step", {"n": "many"}),
    ("GET", "/orders?exchange=nyse", None),
    ("POST", "/mode", {"exchange": "bybit", "hedge": "yes"}),
    ("POST", "/mode", {"exchange": "nyse", "hedge": True}),
    ("POST", "/mode", {"exchange": "bybit"}),
]


@pytest.mark.parametrize("method,path,body", BAD, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(BAD)])
async def test_bad_admin_input_is_a_400_with_a_message(sim, method, path, body):
    before_faults = sim.state.faults.to_dict()
    before_positions = dict(sim.state.positions)
    if isinstance(body, bytes):
        s, r = await http(method, sim.admin_url + path, raw=body)
    else:
        s, r = await http(method, sim.admin_url + path, body)
    assert s == 400, r
    assert isinstance(r, dict) and isinstance(r.get("error"), str) and r["error"]
    assert sim.state.faults.to_dict() == before_faults  # nothing half-applied
    assert sim.state.positions == before_positions


async def test_unknown_paths_and_methods(sim):
    s, r = await http("GET", sim.admin_url + "/nothing-here")
    assert s == 404 and "error" in r
    s, _ = await http("PUT", sim.admin_url + "/positions", {})
    assert s == 405
    s, r = await http("GET", sim.base_url + "/bybit/v5/nothing")
    assert s == 404 and "simulator has no bybit" in r
    s, r = await http("GET", sim.base_url + "/binance/fapi/v1/nothing")
    assert s == 404 and "simulator has no binance" in r
    # the server is still fine
    s, _ = await http("GET", sim.admin_url + "/info")
    assert s == 200


async def test_position_mode_set_and_shown(sim):
    s, r = await http("GET", sim.admin_url + "/mode")
    assert s == 200 and r == {"bybit": "one_way", "binanceusdm": "one_way"}
    s, r = await http("POST", sim.admin_url + "/mode", {"exchange": "binanceusdm", "hedge": True})
    assert s == 200 and r == {"bybit": "one_way", "binanceusdm": "hedge"}
    await http("POST", sim.admin_url + "/reset")
    assert sim.state.hedge_mode == {"bybit": False, "binanceusdm": False}


async def test_reset_forgets_positions_orders_and_faults(sim):
    st = sim.state
    st.set_position("bybit", "BTCUSDT", "long", "1", "60000")
    await http("POST", sim.admin_url + "/faults", {"http_5xx": 2})
    await bybit_signed_post(sim.base_url, "/v5/order/create", {
        "category": "linear", "symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "qty": "0.1",
        "reduceOnly": True})  # eaten by the 5xx fault
    s, _ = await http("POST", sim.admin_url + "/reset")
    assert s == 200 and st.positions == {} and st.orders == [] and st.faults.http_5xx == []


def test_command_line_prints_its_urls_keys_and_a_config_and_exits_cleanly_on_ctrl_c():
    from simulator.options import SNIPPET_END  # noqa: PLC0415
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "simulator", "--port", "0", "--seed", "4"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        printed = []
        while not printed or printed[-1].rstrip("\n") != SNIPPET_END:
            line = proc.stdout.readline()
            assert line, f"the output ended early: {''.join(printed)}"
            printed.append(line)
        assert printed[0].startswith("simulator: listening on http://127.0.0.1:")
        [admin_line] = [line for line in printed if line.strip().startswith("admin API")]
        admin = admin_line.split()[2]
        assert admin.startswith("http://127.0.0.1:") and admin.endswith("/_sim")
        assert any("key 'sim-key' secret 'sim-secret'" in line for line in printed)
        with urllib.request.urlopen(admin + "/info", timeout=60) as r:
            assert json.loads(r.read())["bybit"]["rest"].endswith("/bybit")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)  # a hang guard
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == "" and "Traceback" not in err
