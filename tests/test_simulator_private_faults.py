"""The private streams' admin faults and the REST latency, over real loopback sockets.

Every fault a test can inject on the account streams — drop, silence, a raw frame,
the Binance listen key expiring now, Bybit auth failing — and ``POST /_sim/latency``.
"Nothing arrived" is shown by order, never by waiting: a marker frame pushed after
the event must be the next frame a client gets.
"""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from tests.sim_private_clients import (
    MovableClock,
    binance_user_stream,
    bybit_auth_args,
    bybit_private_session,
    http,
    listen_key_call,
    next_json,
    next_text,
    send_json,
    start_simulator,
    ws_url,
)
from tests.support import wait_until, within


@pytest.fixture
def clock():
    return MovableClock()


@pytest.fixture
async def sim(nursery, clock):
    return await start_simulator(nursery, clock)


async def _faults(sim, body):
    return await http("POST", sim.admin_url + "/faults", body)


async def _admin_long(sim, exchange, symbol="BTCUSDT"):
    status, body = await http(
        "POST",
        sim.admin_url + "/positions",
        {"exchange": exchange, "symbol": symbol, "side": "long", "qty": "0.010", "entry_price": "60000"},
    )
    assert status == 200, body


async def _closed(ws, what):
    with within(60, what), pytest.raises(trio_websocket.ConnectionClosed):
        while True:
            await ws.get_message()


async def test_drop_ends_the_private_connections_of_one_exchange(sim):
    key, connect = await binance_user_stream(sim)
    async with connect as binance, trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as bybit:
        await bybit_private_session(bybit, sim)
        status, f = await _faults(sim, {"private_ws": "drop", "exchange": "bybit"})
        assert status == 200 and f["private_ws"] == {"bybit": "drop"}
        await _closed(bybit, "the dropped Bybit private connection closed")
        await _faults(sim, {"private_raw": "still here", "exchange": "binanceusdm"})
        assert await next_text(binance, "the Binance stream is untouched") == "still here"
        await _faults(sim, {"private_ws": "drop", "exchange": "binanceusdm"})
        await _closed(binance, "the dropped Binance user data stream closed")
    # the listen key itself is still valid: a new connection streams again
    async with trio_websocket.open_websocket_url(ws_url(sim, "/binance/ws/" + key)) as again:
        await _admin_long(sim, "binanceusdm")
        assert (await next_json(again, "messages on a new connection"))["e"] == "ORDER_TRADE_UPDATE"


async def test_silence_sends_nothing_not_even_pongs_and_loses_that_time(sim):
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await bybit_private_session(ws, sim, topics=("position",))
        status, f = await _faults(sim, {"private_ws": "silence", "exchange": "bybit"})
        assert status == 200 and f["private_ws"] == {"bybit": "silence"}
        handled = sim.hub.private.stats["requests_handled"]
        await send_json(ws, {"req_id": "during", "op": "ping"})
        await wait_until(lambda: sim.hub.private.stats["requests_handled"] > handled, "the silenced ping was read")
        await _admin_long(sim, "bybit")
        await _faults(sim, {"private_ws": "resume", "exchange": "bybit"})
        await send_json(ws, {"req_id": "after", "op": "ping"})
        pong = await next_json(ws, "the first answer after resume")
        assert pong["op"] == "pong" and pong["req_id"] == "after"
        await _admin_long(sim, "bybit", "ETHUSDT")
        assert (await next_json(ws, "data after resume"))["data"][0]["symbol"] == "ETHUSDT"

    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        await _faults(sim, {"private_ws": "silence", "exchange": "binanceusdm"})
        await _admin_long(sim, "binanceusdm")
        status, f = await http("DELETE", sim.admin_url + "/faults")  # clearing the faults resumes too
        assert status == 200 and f["private_ws"] == {}
        await _faults(sim, {"private_raw": "marker", "exchange": "binanceusdm"})
        assert await next_text(ws, "the marker, not the silenced change") == "marker"


async def test_raw_frames_reach_private_clients_verbatim(sim):
    key, connect = await binance_user_stream(sim)
    async with connect as binance, trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as bybit:
        status, _ = await _faults(sim, {"private_raw": '{"topic":"position","data":[{'})
        assert status == 200
        assert await next_text(binance, "the raw frame on Binance") == '{"topic":"position","data":[{'
        assert await next_text(bybit, "the raw frame on Bybit") == '{"topic":"position","data":[{'
        # the connection lives on
        await send_json(bybit, {"op": "auth", "args": bybit_auth_args(sim)})
        assert (await next_json(bybit, "auth after a raw frame"))["success"] is True


async def test_expire_listen_key_now(sim):
    key, connect = await binance_user_stream(sim)
    async with connect as ws:
        status, _ = await _faults(sim, {"expire_listen_key": True})
        assert status == 200
        expired = await next_json(ws, "listenKeyExpired")
        assert expired["e"] == "listenKeyExpired" and expired["listenKey"] == key
        status, body = await listen_key_call(sim, "PUT")
        assert (status, body["code"]) == (400, -1125)
        await _admin_long(sim, "binanceusdm")
        await _faults(sim, {"private_raw": "marker", "exchange": "binanceusdm"})
        assert await next_text(ws, "no account messages after expiry") == "marker"
    status, body = await listen_key_call(sim, "POST")
    assert status == 200 and body["listenKey"] != key


async def test_bybit_auth_fails_the_next_n_attempts(sim):
    status, f = await _faults(sim, {"bybit_auth_fail": 2})
    assert status == 200 and f["bybit_auth_fail"] == 2
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        for _ in range(2):
            await send_json(ws, {"op": "auth", "args": bybit_auth_args(sim)})
            reply = await next_json(ws, "a failed auth")
            assert (reply["success"], reply["ret_msg"]) == (False, "Params Error")
        await send_json(ws, {"op": "auth", "args": bybit_auth_args(sim)})
        assert (await next_json(ws, "the third auth"))["success"] is True
    assert (await http("GET", sim.admin_url + "/faults"))[1]["bybit_auth_fail"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"private_ws": "explode"},
        {"private_raw": 5},
        {"expire_listen_key": False},
        {"bybit_auth_fail": -1},
        {"bybit_auth_fail": 3, "private_ws": "explode"},  # nothing is applied unless all is valid
    ],
)
async def test_bad_private_faults_are_a_400_and_change_nothing(sim, body):
    status, reply = await _faults(sim, body)
    assert status == 400 and reply["error"]
    faults = (await http("GET", sim.admin_url + "/faults"))[1]
    assert faults["bybit_auth_fail"] == 0 and faults["private_ws"] == {}


# ---------------------------------------------------------------------------- REST latency


@pytest.mark.parametrize(
    "body",
    [{"rest_ms": -1}, {"rest_ms": 10_001}, {"rest_ms": "20"}, {"rest_ms": True}, {}, {"rest_ms": 20, "extra": 1}],
)
async def test_latency_is_validated(sim, body):
    status, reply = await http("POST", sim.admin_url + "/latency", body)
    assert status == 400 and "rest_ms" in reply["error"]
    assert await http("GET", sim.admin_url + "/latency") == (200, {"rest_ms": 0})


async def test_every_rest_request_waits_the_latency(sim):
    assert await http("POST", sim.admin_url + "/latency", {"rest_ms": 300}) == (200, {"rest_ms": 300})
    assert await http("GET", sim.admin_url + "/latency") == (200, {"rest_ms": 300})
    for path in ("/binance/fapi/v1/time", "/bybit/v5/market/time"):
        started = trio.current_time()
        status, _ = await http("GET", sim.base_url + path)
        assert status == 200
        assert trio.current_time() - started >= 0.3, path  # a lower bound only: a busy machine is slower
    status, _ = await listen_key_call(sim, "POST")
    assert status == 200
    assert await http("POST", sim.admin_url + "/reset") == (200, {"ok": True})
    assert await http("GET", sim.admin_url + "/latency") == (200, {"rest_ms": 0})
