"""The simulator's Binance user data stream over real loopback sockets (and both exchanges' resting orders).

What a real client sees: the listen-key lifecycle (create, extend, keep-alive, close,
expiry on the simulator's clock) and the account messages of a close order placed
through REST (full and partial fills) and of admin position changes, in the real order
and with the same times as the REST views of the same facts. Formats follow the
exchanges' docs (cited in :mod:`simulator.streams.private_binance`); Bybit's private
stream is in tests/test_simulator_private_bybit.py, the comparison with real payloads
in tests/test_simulator_private_conformance.py.
"""

from __future__ import annotations

import json

import pytest
import trio_websocket

from tests.sim_private_clients import (
    MovableClock,
    binance_signed,
    binance_user_stream,
    bybit_auth_args,
    bybit_private_session,
    bybit_signed,
    http,
    listen_key_call,
    next_json,
    next_text,
    send_json,
    start_simulator,
    ws_url,
)
from tests.support import within


@pytest.fixture
def clock():
    return MovableClock()


@pytest.fixture
async def sim(nursery, clock):
    return await start_simulator(nursery, clock)


# ------------------------------------------------------------------ Binance listen keys


async def test_listen_key_create_extend_keepalive_close(sim):
    status, body = await listen_key_call(sim, "POST", key=None)
    assert (status, body["code"]) == (401, -2014)
    status, body = await listen_key_call(sim, "POST", key="not-a-key")
    assert (status, body["code"]) == (401, -2015)

    status, body = await listen_key_call(sim, "POST")
    assert status == 200 and set(body) == {"listenKey"}
    key = body["listenKey"]
    assert len(key) == 64 and key.isalnum()
    # an account with an active key gets the same key back (extended), not a second one
    assert (await listen_key_call(sim, "POST"))[1] == {"listenKey": key}
    assert await listen_key_call(sim, "PUT") == (200, {"listenKey": key})
    assert await listen_key_call(sim, "PUT", params={"listenKey": key}) == (200, {"listenKey": key})
    status, body = await listen_key_call(sim, "PUT", params={"listenKey": "x" * 64})
    assert (status, body) == (400, {"code": -1125, "msg": "This listenKey does not exist."})

    assert await listen_key_call(sim, "DELETE") == (200, {})
    status, body = await listen_key_call(sim, "PUT")
    assert (status, body["code"]) == (400, -1125)
    status, body = await listen_key_call(sim, "POST")
    assert status == 200 and body["listenKey"] != key


async def test_listen_key_expires_60_minutes_after_the_last_keepalive(sim, clock):
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        clock.advance(59 * 60)
        assert (await listen_key_call(sim, "PUT"))[0] == 200  # extended: 60 more minutes from now
        clock.advance(59 * 60)
        assert (await listen_key_call(sim, "PUT"))[0] == 200
        clock.advance(60 * 60 + 1)
        after_expiry = sim.state.now_ms()
        expired = await next_json(ws, "listenKeyExpired after 60 minutes without keep-alive")
        assert set(expired) == {"e", "E", "listenKey"}
        assert expired["e"] == "listenKeyExpired" and expired["listenKey"] == key
        assert isinstance(expired["E"], str) and after_expiry <= int(expired["E"]) <= sim.state.now_ms()
        status, body = await listen_key_call(sim, "PUT")
        assert (status, body["code"]) == (400, -1125)

        # no account messages after expiry: a change, then a marker frame; the marker comes first
        await http(
            "POST",
            sim.admin_url + "/positions",
            {"exchange": "binanceusdm", "symbol": "BTCUSDT", "side": "long", "qty": "0.010", "entry_price": "60000"},
        )
        await http("POST", sim.admin_url + "/faults", {"private_raw": "marker", "exchange": "binanceusdm"})
        assert await next_text(ws, "the marker") == "marker"


async def test_public_stream_names_still_serve_public_streams(sim):
    await listen_key_call(sim, "POST")
    async with trio_websocket.open_websocket_url(ws_url(sim, "/binance/ws/btcusdt@bookTicker")) as ws:
        msg = await next_json(ws, "a book ticker")
        assert msg["e"] == "bookTicker" and msg["s"] == "BTCUSDT"


# ------------------------------------------------------------------ Binance account messages


async def _binance_long(sim, qty="0.010"):
    status, body = await http(
        "POST",
        sim.admin_url + "/positions",
        {"exchange": "binanceusdm", "symbol": "BTCUSDT", "side": "long", "qty": qty, "entry_price": "60000"},
    )
    assert status == 200, body


async def test_binance_close_order_new_then_trade_then_account_update(sim):
    await _binance_long(sim)
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        status, order = await binance_signed(
            sim,
            "POST",
            "/fapi/v1/order",
            {
                "symbol": "BTCUSDT",
                "side": "SELL",
                "type": "MARKET",
                "quantity": "0.010",
                "reduceOnly": "true",
                "newClientOrderId": "close-1",
                "newOrderRespType": "RESULT",
            },
        )
        assert status == 200, order
        new = await next_json(ws, "ORDER_TRADE_UPDATE NEW")
        trade = await next_json(ws, "ORDER_TRADE_UPDATE TRADE")
        account = await next_json(ws, "ACCOUNT_UPDATE")

    assert new["e"] == "ORDER_TRADE_UPDATE" and (new["o"]["x"], new["o"]["X"]) == ("NEW", "NEW")
    assert new["o"]["i"] == order["orderId"] and new["o"]["c"] == "close-1" and new["o"]["R"] is True
    assert new["o"]["z"] == "0" and new["o"]["t"] == 0
    o = trade["o"]
    assert trade["e"] == "ORDER_TRADE_UPDATE" and (o["x"], o["X"]) == ("TRADE", "FILLED")
    assert o["i"] == order["orderId"] and o["c"] == "close-1" and o["R"] is True and o["S"] == "SELL"
    assert o["l"] == "0.010" and o["z"] == "0.010" and o["o"] == "MARKET" and o["ps"] == "BOTH"
    # the same fill as the REST trade list: id, price, time
    status, trades = await binance_signed(sim, "GET", "/fapi/v1/userTrades", {"symbol": "BTCUSDT"})
    last = trades[-1]
    assert (o["t"], o["L"], o["T"], trade["T"]) == (last["id"], last["price"], last["time"], last["time"])
    assert o["ap"] == order["avgPrice"]
    assert account["e"] == "ACCOUNT_UPDATE" and account["a"]["m"] == "ORDER" and account["T"] == last["time"]
    (pos,) = account["a"]["P"]
    assert (pos["s"], pos["pa"], pos["ep"], pos["ps"]) == ("BTCUSDT", "0", "0.00000", "BOTH")
    assert isinstance(account["E"], int) and account["E"] >= account["T"]


async def test_binance_partial_fill_trade_account_update_then_expired(sim):
    await _binance_long(sim, "0.020")
    await http("POST", sim.admin_url + "/faults", {"partial_fill_ratio": "0.5"})
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        status, order = await binance_signed(
            sim,
            "POST",
            "/fapi/v1/order",
            {
                "symbol": "BTCUSDT",
                "side": "SELL",
                "type": "MARKET",
                "quantity": "0.020",
                "reduceOnly": "true",
                "newOrderRespType": "RESULT",
            },
        )
        assert status == 200 and order["status"] == "EXPIRED", order
        kinds = []
        for _ in range(4):
            msg = await next_json(ws, "the partial fill's messages")
            kinds.append((msg["e"], msg["o"]["x"], msg["o"]["X"]) if "o" in msg else (msg["e"],))
            if msg["e"] == "ORDER_TRADE_UPDATE" and msg["o"]["x"] == "TRADE":
                trade = msg
            if msg["e"] == "ACCOUNT_UPDATE":
                account = msg
    assert kinds == [
        ("ORDER_TRADE_UPDATE", "NEW", "NEW"),
        ("ORDER_TRADE_UPDATE", "TRADE", "PARTIALLY_FILLED"),
        ("ACCOUNT_UPDATE",),
        ("ORDER_TRADE_UPDATE", "EXPIRED", "EXPIRED"),
    ]
    assert trade["o"]["l"] == "0.010" and trade["o"]["z"] == "0.010" and trade["o"]["q"] == "0.020"
    assert account["a"]["P"][0]["pa"] == "0.010" and account["a"]["P"][0]["ep"] == "60000"
    # the position's updateTime in REST is the time the stream gives
    status, risk = await binance_signed(sim, "GET", "/fapi/v2/positionRisk", {"symbol": "BTCUSDT"})
    assert account["T"] == risk[0]["updateTime"] == trade["o"]["T"]


async def test_binance_admin_changes_come_as_a_trading_bot_order(sim):
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        await http(
            "POST",
            sim.admin_url + "/positions",
            {"exchange": "binanceusdm", "symbol": "ETHUSDT", "side": "short", "qty": "0.500", "entry_price": "3000"},
        )
        new, trade, account = [await next_json(ws, "the admin change's messages") for _ in range(3)]
        assert (new["o"]["x"], trade["o"]["x"], trade["o"]["X"], account["e"]) == (
            "NEW",
            "TRADE",
            "FILLED",
            "ACCOUNT_UPDATE",
        )
        assert trade["o"]["R"] is False and trade["o"]["c"].startswith("sim-admin-") and trade["o"]["S"] == "SELL"
        pos = account["a"]["P"][0]
        assert (pos["s"], pos["pa"], pos["ep"]) == ("ETHUSDT", "-0.500", "3000")

        await http("DELETE", sim.admin_url + "/positions?exchange=binanceusdm&symbol=ETHUSDT")
        new, trade, account = [await next_json(ws, "the admin close's messages") for _ in range(3)]
        assert trade["o"]["S"] == "BUY" and account["a"]["P"][0]["pa"] == "0"
        status, trades = await binance_signed(sim, "GET", "/fapi/v1/userTrades", {"symbol": "ETHUSDT"})
        assert trade["o"]["t"] == trades[-1]["id"] and trade["T"] == trades[-1]["time"]


async def test_bybit_changes_do_not_reach_binance_streams(sim):
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        await http(
            "POST",
            sim.admin_url + "/positions",
            {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "0.010", "entry_price": "60000"},
        )
        await http("POST", sim.admin_url + "/faults", {"private_raw": "marker", "exchange": "binanceusdm"})
        assert await next_text(ws, "the marker") == "marker"


async def test_binance_and_bybit_streams_ignore_garbage_from_clients(sim):
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await ws.send_message("not json")
        reply = await next_json(ws, "the answer to garbage")
        assert reply["success"] is False
        await send_json(ws, {"op": "auth", "args": bybit_auth_args(sim)})
        assert (await next_json(ws, "auth after garbage"))["success"] is True
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        await ws.send_message(json.dumps({"method": "SUBSCRIBE", "params": ["x"], "id": 1}))
        await _binance_long(sim)
        assert (await next_json(ws, "account messages after garbage"))["e"] == "ORDER_TRADE_UPDATE"


async def test_resting_limit_orders_and_their_cancel(sim):
    """A limit that does not cross rests: only NEW (New); a cancel: CANCELED (Cancelled); no position message."""
    await _binance_long(sim)
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        status, order = await binance_signed(
            sim,
            "POST",
            "/fapi/v1/order",
            {
                "symbol": "BTCUSDT",
                "side": "SELL",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": "0.010",
                "price": "90000",
                "reduceOnly": "true",
            },
        )
        assert status == 200, order
        new = await next_json(ws, "the resting order's NEW")
        assert (new["o"]["x"], new["o"]["X"], new["o"]["o"], new["o"]["p"]) == ("NEW", "NEW", "LIMIT", "90000.0")
        status, _ = await binance_signed(
            sim, "DELETE", "/fapi/v1/order", {"symbol": "BTCUSDT", "orderId": order["orderId"]}
        )
        assert status == 200
        canceled = await next_json(ws, "the cancel")
        assert (canceled["o"]["x"], canceled["o"]["X"], canceled["o"]["i"]) == (
            "CANCELED",
            "CANCELED",
            order["orderId"],
        )

    await http(
        "POST",
        sim.admin_url + "/positions",
        {"exchange": "bybit", "symbol": "BTCUSDT", "side": "long", "qty": "0.010", "entry_price": "60000"},
    )
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await bybit_private_session(ws, sim)
        status, created = await bybit_signed(
            sim,
            "POST",
            "/v5/order/create",
            {
                "category": "linear",
                "symbol": "BTCUSDT",
                "side": "Sell",
                "orderType": "Limit",
                "qty": "0.010",
                "price": "90000",
                "reduceOnly": True,
            },
        )
        assert created["retCode"] == 0, created
        new = await next_json(ws, "the resting order")
        assert new["topic"] == "order" and new["data"][0]["orderStatus"] == "New"
        status, _ = await bybit_signed(
            sim,
            "POST",
            "/v5/order/cancel",
            {"category": "linear", "symbol": "BTCUSDT", "orderId": created["result"]["orderId"]},
        )
        canceled = await next_json(ws, "the cancel")
        assert canceled["topic"] == "order" and canceled["data"][0]["orderStatus"] == "Cancelled"


async def test_closing_the_listen_key_ends_its_stream(sim):
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        assert await listen_key_call(sim, "DELETE") == (200, {})
        with within(60, "the stream of a closed key ended"), pytest.raises(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()
