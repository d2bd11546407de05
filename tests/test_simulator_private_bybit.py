"""The simulator's Bybit v5 private stream over real loopback sockets.

``auth`` (success and the real failure answer), the refused unauthenticated
subscribe, ``subscribe`` (also the ``.linear`` topics), the private pong, and the
messages of a close order placed through REST (full and partial fills) and of admin
changes, in the real order (order New, execution, order final, position) and with the
same times as ``/v5/execution/list`` and ``/v5/position/list``.
"""

from __future__ import annotations

import pytest
import trio_websocket

from tests.sim_private_clients import (
    MovableClock,
    bybit_auth_args,
    bybit_private_session,
    bybit_signed,
    http,
    next_json,
    send_json,
    start_simulator,
    ws_url,
)


@pytest.fixture
def clock():
    return MovableClock()


@pytest.fixture
async def sim(nursery, clock):
    return await start_simulator(nursery, clock)


# ------------------------------------------------------------------ Bybit private stream


async def test_bybit_auth_answers_success_and_the_real_failure(sim):
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await send_json(ws, {"req_id": "s0", "op": "subscribe", "args": ["position"]})
        refused = await next_json(ws, "the unauthenticated subscribe answer")
        assert refused["success"] is False and refused["ret_msg"] == "Request not authorized"
        assert refused["op"] == "subscribe" and refused["req_id"] == "s0"

        bad = [
            bybit_auth_args(sim, secret="wrong"),  # bad signature
            bybit_auth_args(sim, expires_in_ms=-1000),  # "expires" already past
            bybit_auth_args(sim, key="unknown-key"),  # unknown key
            ["sim-key", "soon", "00"],  # malformed
        ]
        for args in bad:
            await send_json(ws, {"op": "auth", "args": args})
            reply = await next_json(ws, "an auth failure")
            assert set(reply) == {"success", "ret_msg", "op", "conn_id"}
            assert (reply["success"], reply["ret_msg"], reply["op"]) == (False, "Params Error", "auth")

        await send_json(ws, {"op": "auth", "args": bybit_auth_args(sim)})
        ok = await next_json(ws, "the auth success")
        assert ok == {"success": True, "ret_msg": "", "op": "auth", "conn_id": ok["conn_id"]} and ok["conn_id"]

        await send_json(ws, {"req_id": "s1", "op": "subscribe", "args": ["position", "order", "execution"]})
        sub = await next_json(ws, "the subscribe answer")
        assert (sub["success"], sub["ret_msg"], sub["op"], sub["req_id"]) == (True, "", "subscribe", "s1")
        await send_json(ws, {"op": "subscribe", "args": ["wallet.nonsense"]})
        assert (await next_json(ws, "a bad topic's answer"))["success"] is False

        await send_json(ws, {"req_id": "p1", "op": "ping"})
        pong = await next_json(ws, "the private pong")
        assert set(pong) == {"req_id", "op", "args", "conn_id"} and pong["op"] == "pong" and pong["req_id"] == "p1"
        assert isinstance(pong["args"][0], str) and pong["args"][0].isdigit() and pong["conn_id"] == ok["conn_id"]


async def test_bybit_close_order_order_execution_order_position(sim):
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
                "orderType": "Market",
                "qty": "0.010",
                "reduceOnly": True,
                "orderLinkId": "close-1",
            },
        )
        assert status == 200 and created["retCode"] == 0, created
        msgs = [await next_json(ws, "the close's messages") for _ in range(4)]
    assert [m["topic"] for m in msgs] == ["order", "execution", "order", "position"]
    for m in msgs:
        assert set(m) == {"id", "topic", "creationTime", "data"} and isinstance(m["creationTime"], int)
        assert isinstance(m["id"], str) and m["id"]
    new, execution, done, position = (m["data"] for m in msgs)
    oid = created["result"]["orderId"]
    assert (new[0]["orderId"], new[0]["orderStatus"], new[0]["cumExecQty"]) == (oid, "New", "0")
    assert (done[0]["orderId"], done[0]["orderStatus"], done[0]["cumExecQty"]) == (oid, "Filled", "0.010")
    assert new[0]["reduceOnly"] is True and new[0]["orderLinkId"] == "close-1" and new[0]["category"] == "linear"
    status, execs = await bybit_signed(sim, "GET", "/v5/execution/list", {"category": "linear", "symbol": "BTCUSDT"})
    rest_exec = execs["result"]["list"][0]  # newest first
    assert (execution[0]["execId"], execution[0]["execTime"], execution[0]["execQty"]) == (
        rest_exec["execId"],
        rest_exec["execTime"],
        "0.010",
    )
    status, plist = await bybit_signed(sim, "GET", "/v5/position/list", {"category": "linear", "symbol": "BTCUSDT"})
    rest_pos = plist["result"]["list"][0]
    assert (position[0]["size"], position[0]["side"]) == ("0", "")
    assert position[0]["updatedTime"] == rest_pos["updatedTime"] == rest_exec["execTime"]


async def test_bybit_partial_fill_and_linear_topics(sim):
    await http(
        "POST",
        sim.admin_url + "/positions",
        {"exchange": "bybit", "symbol": "BTCUSDT", "side": "short", "qty": "0.020", "entry_price": "60000"},
    )
    await http("POST", sim.admin_url + "/faults", {"partial_fill_ratio": "0.5"})
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await bybit_private_session(ws, sim, topics=("order.linear", "execution.linear", "position.linear"))
        status, created = await bybit_signed(
            sim,
            "POST",
            "/v5/order/create",
            {
                "category": "linear",
                "symbol": "BTCUSDT",
                "side": "Buy",
                "orderType": "Market",
                "qty": "0.020",
                "reduceOnly": True,
            },
        )
        assert created["retCode"] == 0, created
        msgs = [await next_json(ws, "the partial close's messages") for _ in range(4)]
    assert [m["topic"] for m in msgs] == ["order.linear", "execution.linear", "order.linear", "position.linear"]
    assert msgs[1]["data"][0]["execQty"] == "0.010"
    assert msgs[2]["data"][0]["orderStatus"] == "PartiallyFilledCanceled"
    assert (msgs[3]["data"][0]["size"], msgs[3]["data"][0]["side"]) == ("0.010", "Sell")


async def test_bybit_admin_changes_come_as_a_trading_bot_order(sim):
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await bybit_private_session(ws, sim, topics=("order", "execution", "position"))
        await http(
            "POST",
            sim.admin_url + "/positions",
            {"exchange": "bybit", "symbol": "ETHUSDT", "side": "long", "qty": "0.500", "entry_price": "3000"},
        )
        msgs = [await next_json(ws, "the admin change's messages") for _ in range(4)]
        assert [m["topic"] for m in msgs] == ["order", "execution", "order", "position"]
        assert msgs[0]["data"][0]["reduceOnly"] is False and msgs[2]["data"][0]["orderStatus"] == "Filled"
        assert (msgs[3]["data"][0]["size"], msgs[3]["data"][0]["side"]) == ("0.500", "Buy")
        assert msgs[3]["data"][0]["entryPrice"] == "3000"
        # a manual partial close at a price, later: the same four, the position smaller
        await http(
            "POST",
            sim.admin_url + "/positions",
            {
                "exchange": "bybit",
                "symbol": "ETHUSDT",
                "side": "long",
                "qty": "0.200",
                "entry_price": "3000",
                "fill_price": "3100",
            },
        )
        msgs = [await next_json(ws, "the manual reduction's messages") for _ in range(4)]
        assert msgs[1]["data"][0]["execPrice"] == "3100.00" and msgs[1]["data"][0]["side"] == "Sell"
        assert msgs[3]["data"][0]["size"] == "0.200"


async def test_an_explicit_admin_fill_keeps_its_order_ids_on_the_stream(sim):
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await bybit_private_session(ws, sim, topics=("execution",))
        status, body = await http(
            "POST",
            sim.admin_url + "/fills",
            {
                "exchange": "bybit",
                "symbol": "BTCUSDT",
                "side": "buy",
                "qty": "0.010",
                "price": "60000",
                "client_order_id": "manual-1",
            },
        )
        assert status == 200, body
        execution = (await next_json(ws, "the manual trade's execution"))["data"][0]
        assert execution["orderLinkId"] == "manual-1" and execution["execId"] == body["fill"]["trade_id"]
        assert execution["orderId"] == body["fill"]["order_id"] and execution["execTime"] == str(
            body["fill"]["time_ms"]
        )
