"""Every private message the simulator sends has the shape of a real one.

The real payloads are the conformance corpus in ``tests/conformance/private/`` (their
sources in ``tests/conformance/SOURCES.md``). A scenario drives both exchanges' private
streams over real sockets — listen key calls, a full and a partial close through REST,
an admin change, the key expiring; Bybit auth, subscribe, ping, the same orders — and
every message it gets is matched to the real payload of its kind and compared: the
same keys, recursively, the same JSON value types, the same envelope. A message of a
kind with no real payload fails the test. Each message also goes through the
product's parser (:mod:`feeds.account_protocols`, itself checked on the corpus), which
must read it without a ``Malformed`` or ``Ignored``.

Deliberate differences, each from the exchange's own field tables:

* Binance ``ORDER_TRADE_UPDATE`` vs the docs' example (a trailing stop): no ``AP``
  (activation price) and ``cr`` (callback rate), "only pushed with TRAILING_STOP_MARKET
  order" ("Event: Order Update" field list, developers.binance.com USD-M futures).
* Binance ``ACCOUNT_UPDATE`` vs the captured one-way cross short: ``bep`` (break-even
  price) added, as in the docs' example and field list ("Event: Balance and Position
  Update").
* Bybit ``order``: ``cumFeeDetail`` is keyed by fee coin (the docs' option example
  paid MNT, linear orders pay USDT).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio_websocket

from feeds.account_binance import read_listen_key
from feeds.account_events import Ignored, Malformed
from feeds.account_protocols import make_account_protocol
from tests.sim_private_clients import (
    MovableClock,
    binance_signed,
    binance_user_stream,
    bybit_auth_args,
    bybit_signed,
    http,
    listen_key_call,
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


CORPUS = Path(__file__).parent / "conformance" / "private"


def real(name: str):
    return json.loads((CORPUS / name).read_text())


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__  # str, dict, list


def differences(sim_value, real_value, path: str = "", *, extra=(), missing=()) -> list[str]:
    """Where ``sim_value`` differs in keys or JSON types from ``real_value`` (allowed paths aside)."""
    out: list[str] = []
    if _kind(sim_value) != _kind(real_value):
        return [f"{path or '.'}: {_kind(sim_value)} instead of {_kind(real_value)}"]
    if isinstance(real_value, dict):
        for key in real_value:
            sub = f"{path}.{key}" if path else key
            if key not in sim_value:
                if sub not in missing:
                    out.append(f"{sub}: missing")
                continue
            out += differences(sim_value[key], real_value[key], sub, extra=extra, missing=missing)
        for key in sim_value:
            sub = f"{path}.{key}" if path else key
            if key not in real_value and sub not in extra:
                out.append(f"{sub}: not in the real payload")
    elif isinstance(real_value, list) and real_value and sim_value:
        for item in sim_value:
            out += differences(item, real_value[0], path, extra=extra, missing=missing)
    return out


def parses_cleanly(exchange: str, msg: dict) -> list:
    """The product's parser (validated on the real corpus) reads ``msg`` without Malformed or Ignored."""
    results = make_account_protocol(exchange).parse(json.dumps(msg))
    assert results and not any(isinstance(r, (Malformed, Ignored)) for r in results), (msg, results)
    return results


def test_the_comparison_catches_keys_and_types():
    assert differences({"a": "1", "b": {"c": 1}}, {"a": "2", "b": {"c": 2}}) == []
    assert differences({"a": 1}, {"a": "1"}) == ["a: integer instead of str"]
    assert differences({"a": True}, {"a": 1}) == ["a: boolean instead of integer"]
    assert differences({"b": [{"c": "x", "d": 1}]}, {"b": [{"c": "y"}]}) == ["b.d: not in the real payload"]
    assert differences({}, {"a": "1"}) == ["a: missing"]
    assert differences({}, {"a": "1"}, missing={"a"}) == []


# the real payload each kind of simulator message is held to, and the allowed differences
BINANCE_REFERENCES = {
    ("ORDER_TRADE_UPDATE", "NEW"): ("binance_order_trade_update_docs.json", {"missing": {"o.AP", "o.cr"}}),
    ("ORDER_TRADE_UPDATE", "TRADE"): ("binance_order_trade_update_docs.json", {"missing": {"o.AP", "o.cr"}}),
    ("ORDER_TRADE_UPDATE", "EXPIRED"): ("binance_order_trade_update_docs.json", {"missing": {"o.AP", "o.cr"}}),
    ("ACCOUNT_UPDATE", None): ("binance_account_update_cross_short_capture.json", {"extra": {"a.P.bep"}}),
    ("listenKeyExpired", None): ("binance_listen_key_expired_docs.json", {}),
}


def binance_reference(msg: dict):
    x = msg["o"]["x"] if msg.get("e") == "ORDER_TRADE_UPDATE" else None
    return BINANCE_REFERENCES.get((msg.get("e"), x))


async def test_binance_private_messages_have_the_real_shapes(sim):
    status, post = await listen_key_call(sim, "POST")
    assert differences(post, real("binance_listen_key_post_docs.json")) == []
    status, put = await listen_key_call(sim, "PUT")
    assert differences(put, real("binance_listen_key_put_docs.json")) == []
    assert read_listen_key(post) == read_listen_key(put) == post["listenKey"]

    await http(
        "POST",
        sim.admin_url + "/positions",
        {"exchange": "binanceusdm", "symbol": "BTCUSDT", "side": "long", "qty": "0.030", "entry_price": "60000"},
    )
    key, connect = await binance_user_stream(sim)
    got = []
    async with connect as ws:
        await binance_signed(
            sim,
            "POST",
            "/fapi/v1/order",
            {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010", "reduceOnly": "true"},
        )
        got += [await next_json(ws, "a full close's messages") for _ in range(3)]
        await http("POST", sim.admin_url + "/faults", {"partial_fill_ratio": "0.5"})
        await binance_signed(
            sim,
            "POST",
            "/fapi/v1/order",
            {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.020", "reduceOnly": "true"},
        )
        got += [await next_json(ws, "a partial close's messages") for _ in range(4)]
        await http("DELETE", sim.admin_url + "/positions?exchange=binanceusdm&symbol=BTCUSDT")
        got += [await next_json(ws, "an admin close's messages") for _ in range(3)]
        await http("POST", sim.admin_url + "/faults", {"expire_listen_key": True})
        got.append(await next_json(ws, "listenKeyExpired"))

    seen = set()
    for msg in got:
        ref = binance_reference(msg)
        assert ref is not None, f"no real payload for {msg}"
        name, allowed = ref
        assert differences(msg, real(name), **allowed) == [], msg
        parses_cleanly("binanceusdm", msg)
        seen.add((msg["e"], msg["o"]["x"] if "o" in msg else None))
    assert seen == set(BINANCE_REFERENCES)
    # a filled MARKET order's "o" is exactly the shape of the one ccxt printed from a live order
    trade = next(m for m in got if m["e"] == "ORDER_TRADE_UPDATE" and m["o"]["X"] == "FILLED")
    assert differences(trade["o"], real("binance_order_market_fill_o_ccxt.json")) == []
    flat = next(m for m in got if m["e"] == "ACCOUNT_UPDATE" and m["a"]["P"][0]["pa"] == "0")
    assert differences(flat, real("binance_account_update_flat_capture.json"), extra={"a.P.bep"}) == []


# cumFeeDetail is keyed by fee coin: the docs' option order paid in MNT, these linear orders pay USDT
BYBIT_ALLOWED = {"order": {"missing": {"data.cumFeeDetail.MNT"}, "extra": {"data.cumFeeDetail.USDT"}}}
BYBIT_TOPICS = {
    "order": "bybit_order_option_docs.json",
    "execution": "bybit_execution_linear_docs.json",
    "position": "bybit_position_hedge_flat_docs.json",
}


async def test_bybit_private_messages_have_the_real_shapes(sim):
    await http(
        "POST",
        sim.admin_url + "/positions",
        {"exchange": "bybit", "symbol": "BTCUSDT", "side": "short", "qty": "0.030", "entry_price": "60000"},
    )
    async with trio_websocket.open_websocket_url(ws_url(sim, "/bybit/v5/private")) as ws:
        await send_json(ws, {"op": "auth", "args": bybit_auth_args(sim, secret="wrong")})
        failure = await next_json(ws, "an auth failure")
        assert differences(failure, real("bybit_auth_failure_v5_capture.json")) == []
        assert failure["ret_msg"] == real("bybit_auth_failure_v5_capture.json")["ret_msg"]
        parses_cleanly("bybit", failure)
        await send_json(ws, {"req_id": "a1", "op": "auth", "args": bybit_auth_args(sim)})
        echoed = await next_json(ws, "auth with a req_id")
        assert differences(echoed, real("bybit_auth_success_capture.json")) == [] and echoed["req_id"] == "a1"

        controls = [
            ({"op": "auth", "args": bybit_auth_args(sim)}, "bybit_auth_success_docs.json"),
            ({"op": "subscribe", "args": ["order", "execution", "position"]}, "bybit_subscribe_private_docs.json"),
            ({"req_id": "test", "op": "ping"}, "bybit_pong_private_docs.json"),
        ]
        for request, name in controls:
            await send_json(ws, request)
            answer = await next_json(ws, f"the answer to {request['op']}")
            assert differences(answer, real(name)) == [], answer
            parses_cleanly("bybit", answer)

        got = []
        await bybit_signed(
            sim,
            "POST",
            "/v5/order/create",
            {
                "category": "linear",
                "symbol": "BTCUSDT",
                "side": "Buy",
                "orderType": "Market",
                "qty": "0.010",
                "reduceOnly": True,
            },
        )
        got += [await next_json(ws, "a close's messages") for _ in range(4)]
        await http("POST", sim.admin_url + "/faults", {"partial_fill_ratio": "0.5"})
        await bybit_signed(
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
        got += [await next_json(ws, "a partial close's messages") for _ in range(4)]
        await http("DELETE", sim.admin_url + "/positions?exchange=bybit&symbol=BTCUSDT")
        got += [await next_json(ws, "an admin close's messages") for _ in range(4)]

    assert {m["topic"] for m in got} == set(BYBIT_TOPICS)
    for msg in got:
        assert differences(msg, real(BYBIT_TOPICS[msg["topic"]]), **BYBIT_ALLOWED.get(msg["topic"], {})) == [], msg
        parses_cleanly("bybit", msg)
