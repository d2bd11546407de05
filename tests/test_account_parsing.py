"""The private-stream parsers against real payloads (``tests/conformance/private``).

Every file of the corpus parses to exactly the events its fields say (checked field by
field against the payload itself). Frames the exchanges' docs have no example of (a
Bybit linear order, an open one-way Bybit position, a Binance partial fill) are built
from the documented ones by changing only the fields named in the test; hostile and
malformed frames are in ``tests/test_account_parsing_hostile.py``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest

from exchanges.symbols import unified_symbol
from feeds.account_binance import BinanceAccountProtocol, read_listen_key
from feeds.account_bybit import TOPICS, BybitAccountProtocol
from feeds.account_events import (
    AuthResult,
    Execution,
    Ignored,
    ListenKeyExpired,
    Malformed,
    OrderChange,
    Pong,
    PositionChange,
    Subscribed,
)
from feeds.account_protocols import make_account_protocol
from feeds.fields import BadValue

CORPUS = Path(__file__).parent / "conformance" / "private"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def raw(name: str) -> str:
    return (CORPUS / name).read_text(encoding="utf-8")


def load(name: str):
    return json.loads(raw(name))


def ms(value: int | str) -> datetime:
    return EPOCH + timedelta(milliseconds=int(value))


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def binance(frame: str | bytes | dict):
    return BinanceAccountProtocol().parse(frame if not isinstance(frame, dict) else dumps(frame))


def bybit(frame: str | bytes | dict):
    return BybitAccountProtocol().parse(frame if not isinstance(frame, dict) else dumps(frame))


def test_every_corpus_file_is_checked_here():
    """A payload added to the corpus must get its test in this file."""
    source = Path(__file__).read_text(encoding="utf-8")
    files = sorted(p.name for p in CORPUS.glob("*.json"))
    assert len(files) >= 20
    assert [f for f in files if f'"{f}"' not in source] == []


# -- Binance: ACCOUNT_UPDATE ---------------------------------------------------------------


def binance_position(entry: dict, frame: dict) -> PositionChange:
    """What an entry of ``a.P`` says, read straight from the payload."""
    amt = D(entry["pa"])
    flat = amt == 0
    return PositionChange(
        exchange="binanceusdm",
        symbol=unified_symbol(entry["s"]),
        side=None if flat else ("long" if amt > 0 else "short"),
        qty=abs(amt),
        entry_price=None if flat else D(entry["ep"]),
        time=ms(frame["T"]),
        reason=frame["a"]["m"],
    )


@pytest.mark.parametrize(
    "name",
    [
        "binance_account_update_short_ccxt.json",
        "binance_account_update_cross_short_capture.json",
        "binance_account_update_flat_capture.json",
    ],
)
def test_binance_one_way_account_updates(name):
    frame = load(name)
    [entry] = frame["a"]["P"]
    assert entry["ps"] == "BOTH"
    assert binance(raw(name)) == [binance_position(entry, frame)]


def test_binance_captured_short_values():
    [change] = binance(raw("binance_account_update_short_ccxt.json"))
    assert (change.symbol, change.side, change.qty, change.entry_price) == (
        "BTC/USDT:USDT",
        "short",
        D("0.089"),
        D("19700.03933"),
    )
    assert change.time == datetime(2022, 11, 8, 4, 22, 33, 112000, tzinfo=UTC)  # T, not E (…115)
    assert change.reason == "ORDER" and not change.flat


def test_binance_captured_flat_position():
    [change] = binance(raw("binance_account_update_flat_capture.json"))
    assert change.flat and change.qty == 0 and change.entry_price is None
    assert change.symbol == "XEM/USDT:USDT"


def test_binance_docs_account_update_mixes_modes():
    """The docs example has a BOTH entry and LONG/SHORT entries of one symbol (see SOURCES.md)."""
    frame = load("binance_account_update_docs.json")
    results = binance(raw("binance_account_update_docs.json"))
    assert results[0] == binance_position(frame["a"]["P"][0], frame)
    assert results[0].flat
    assert [type(r) for r in results[1:]] == [Ignored, Ignored]
    assert "LONG" in results[1].reason and "SHORT" in results[2].reason
    assert all("one-way" in r.reason for r in results[1:])


def test_binance_balance_only_update_is_ignored():
    [result] = binance(raw("binance_account_update_balance_only_capture.json"))
    assert isinstance(result, Ignored) and "ADMIN_DEPOSIT" in result.reason


def test_binance_funding_update_without_positions_is_ignored():
    """Docs: a cross-margin funding fee comes with ``B`` only, no ``P``."""
    frame = load("binance_account_update_balance_only_capture.json")
    del frame["a"]["P"]
    frame["a"]["m"] = "FUNDING_FEE"
    [result] = binance(frame)
    assert isinstance(result, Ignored) and "FUNDING_FEE" in result.reason


def test_binance_long_position_side_from_sign():
    """The captured short with ``pa`` made positive (the only change)."""
    frame = load("binance_account_update_short_ccxt.json")
    frame["a"]["P"][0]["pa"] = "0.089"
    [change] = binance(frame)
    assert (change.side, change.qty) == ("long", D("0.089"))


# -- Binance: ORDER_TRADE_UPDATE -----------------------------------------------------------


def test_binance_docs_order_update():
    frame = load("binance_order_trade_update_docs.json")
    o = frame["o"]
    assert binance(raw("binance_order_trade_update_docs.json")) == [
        OrderChange(
            exchange="binanceusdm",
            symbol=unified_symbol(o["s"]),
            client_order_id=o["c"],
            exchange_order_id=str(o["i"]),
            side=o["S"].lower(),
            status="open",  # X NEW
            filled_qty=D(o["z"]),
            avg_price=None,  # ap "0": nothing filled
            requested_qty=D(o["q"]),
            reduce_only=o["R"],
            time=ms(o["T"]),
        )
    ]


def market_fill_frame() -> dict:
    """The published order object in the documented envelope, E = T = its own T (SOURCES.md)."""
    o = load("binance_order_market_fill_o_ccxt.json")
    return {"e": "ORDER_TRADE_UPDATE", "E": o["T"], "T": o["T"], "o": o}


def test_binance_captured_market_fill_is_order_and_execution():
    o = market_fill_frame()["o"]
    order, fill = binance(market_fill_frame())
    assert order == OrderChange(
        exchange="binanceusdm",
        symbol="BTC/USDT:USDT",
        client_order_id=o["c"],
        exchange_order_id="3545765667",
        side="buy",
        status="closed",  # X FILLED
        filled_qty=D("0.046"),
        avg_price=D("39444.20000"),
        requested_qty=D("0.046"),
        reduce_only=False,
        time=ms(1701552372880),
        last_fill_qty=D("0.046"),
        last_fill_price=D("39444.20"),
    )
    assert order.final
    assert fill == Execution(
        exchange="binanceusdm",
        symbol="BTC/USDT:USDT",
        fill_id="273796610",
        exchange_order_id="3545765667",
        client_order_id="web_2QH8eIQxrrf8UN0YpBtp",
        side="buy",
        qty=D("0.046"),
        price=D("39444.20"),
        time=ms(1701552372880),
    )


def test_binance_partial_fill_keeps_order_open():
    """The captured fill made partial: q 0.1, z = l 0.046, X PARTIALLY_FILLED."""
    frame = market_fill_frame()
    frame["o"].update(q="0.100", X="PARTIALLY_FILLED", R=True)
    frame["T"] = frame["E"] = frame["o"]["T"] + 7  # the event's times; the order's is o.T
    order, fill = binance(frame)
    assert order.time == fill.time == ms(1701552372880)
    assert (order.status, order.filled_qty, order.requested_qty, order.reduce_only) == (
        "open",
        D("0.046"),
        D("0.100"),
        True,
    )
    assert (order.last_fill_qty, fill.qty, fill.price) == (D("0.046"), D("0.046"), D("39444.20"))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("NEW", "open"),
        ("PARTIALLY_FILLED", "open"),
        ("FILLED", "closed"),
        ("CANCELED", "canceled"),
        ("EXPIRED", "canceled"),
        ("EXPIRED_IN_MATCH", "canceled"),
        ("REJECTED", "rejected"),
    ],
)
def test_binance_order_statuses(status, expected):
    frame = load("binance_order_trade_update_docs.json")
    frame["o"]["X"] = status
    [order] = binance(frame)
    assert order.status == expected


def test_binance_expired_ioc_with_a_partial_fill_is_canceled_not_closed():
    frame = market_fill_frame()
    frame["o"].update(x="EXPIRED", X="EXPIRED", q="0.1")
    [order] = binance(frame)  # no fill in an EXPIRED event
    assert (order.status, order.filled_qty, order.last_fill_qty) == ("canceled", D("0.046"), None)


def test_binance_listen_key_expired():
    assert binance(raw("binance_listen_key_expired_docs.json")) == [
        ListenKeyExpired(load("binance_listen_key_expired_docs.json")["listenKey"])
    ]


@pytest.mark.parametrize("name", ["binance_listen_key_post_docs.json", "binance_listen_key_put_docs.json"])
def test_binance_listen_key_answers(name):
    assert read_listen_key(load(name)) == load(name)["listenKey"]


@pytest.mark.parametrize("answer", [{}, {"listenKey": ""}, {"listenKey": 5}, {"listenKey": "a/b"}, [], None, "k"])
def test_binance_bad_listen_key_answers(answer):
    with pytest.raises(BadValue):
        read_listen_key(answer)


@pytest.mark.parametrize("name", ["binance_trade_lite_docs.json", "binance_account_config_update_docs.json"])
def test_binance_other_events_are_ignored(name):
    [result] = binance(raw(name))
    assert isinstance(result, Ignored) and load(name)["e"] in result.reason


def test_binance_combined_stream_envelope_is_unwrapped():
    inner = load("binance_account_update_short_ccxt.json")
    assert binance({"stream": "listenkey", "data": inner}) == binance(inner)


def test_binance_usdc_contract_is_not_ours():
    frame = load("binance_account_update_short_ccxt.json")
    frame["a"]["P"][0]["s"] = "BTCUSDC"
    [result] = binance(frame)
    assert isinstance(result, Ignored) and "BTCUSDC" in result.reason


# -- Bybit: control answers ------------------------------------------------------------------


def test_bybit_control_answers():
    assert bybit(raw("bybit_auth_success_docs.json")) == [AuthResult(True, "")]
    assert bybit(raw("bybit_auth_failure_ccxt.json")) == [AuthResult(False, "error:USVC1111")]
    assert bybit(raw("bybit_auth_failure_v5_capture.json")) == [AuthResult(False, "Params Error")]
    assert bybit(raw("bybit_auth_success_capture.json")) == [AuthResult(True, "")]
    assert bybit(raw("bybit_subscribe_private_docs.json")) == [Subscribed(True, "")]
    assert bybit(raw("bybit_pong_private_docs.json")) == [Pong("test")]


def test_bybit_refused_subscription_carries_the_message():
    frame = load("bybit_subscribe_private_docs.json") | {"success": False, "ret_msg": "error:handler not found"}
    assert bybit(frame) == [Subscribed(False, "error:handler not found")]


def test_bybit_public_style_pong_is_a_pong():
    """The Linear/Inverse public answer to ping on the Connect page: op "ping", ret_msg "pong"."""
    frame = {"success": True, "ret_msg": "pong", "conn_id": "465772b1", "req_id": "", "op": "ping"}
    assert bybit(frame) == [Pong(None)]


def test_bybit_auth_message_follows_the_docs():
    protocol = BybitAccountProtocol()
    message = json.loads(protocol.auth_message("my-key", "my-secret", 1662350400000))
    assert message["op"] == "auth"
    key, expires, signature = message["args"]
    assert (key, expires) == ("my-key", 1662350400000)  # expires a JSON number, as in the example
    assert signature == hmac.new(b"my-secret", b"GET/realtime1662350400000", hashlib.sha256).hexdigest()
    other = json.loads(protocol.auth_message("my-key", "other-secret", 1662350400000))["args"][2]
    later = json.loads(protocol.auth_message("my-key", "my-secret", 1662350400001))["args"][2]
    assert len({signature, other, later}) == 3


def test_bybit_subscribe_and_ping_messages():
    protocol = BybitAccountProtocol()
    subscribe = json.loads(protocol.subscribe_message())
    assert subscribe["op"] == "subscribe"
    assert subscribe["args"] == list(TOPICS) == ["position.linear", "order.linear", "execution.linear"]
    first, second = json.loads(protocol.ping_message()), json.loads(protocol.ping_message())
    assert first["op"] == second["op"] == "ping" and first["req_id"] != second["req_id"]


# -- Bybit: topics ---------------------------------------------------------------------------


def test_bybit_docs_hedge_mode_position_is_ignored():
    [result] = bybit(raw("bybit_position_hedge_flat_docs.json"))
    assert isinstance(result, Ignored) and "positionIdx 2" in result.reason


def test_bybit_open_hedge_mode_buy_side_is_ignored():
    """The docs frame as the Buy side of hedge mode (positionIdx 1), open."""
    frame = load("bybit_position_hedge_flat_docs.json")
    frame["data"][0].update(positionIdx=1, side="Buy", size="0.5", entryPrice="28000")
    [result] = bybit(frame)
    assert isinstance(result, Ignored) and "positionIdx 1" in result.reason


def one_way_position(**fields) -> dict:
    """The docs position frame made one-way (positionIdx 0) with ``fields`` changed."""
    frame = load("bybit_position_hedge_flat_docs.json")
    frame["data"][0].update(positionIdx=0, **fields)
    return frame


def test_bybit_open_one_way_position():
    frame = one_way_position(side="Sell", size="0.5", entryPrice="95900.1")
    entry = frame["data"][0]
    assert bybit(frame) == [
        PositionChange("bybit", "BTC/USDT:USDT", "short", D("0.5"), D("95900.1"), ms(entry["updatedTime"]))
    ]
    [long] = bybit(one_way_position(side="Buy", size="3", entryPrice="28000"))
    assert (long.side, long.qty, long.entry_price) == ("long", D("3"), D("28000"))


@pytest.mark.parametrize("side", ["", "Buy", "Sell", "None"])
def test_bybit_size_zero_is_flat(side):
    [change] = bybit(one_way_position(side=side, size="0", entryPrice="0"))
    assert change.flat and change.qty == 0 and change.entry_price is None
    assert change.time == ms("1697682317038")


def test_bybit_docs_option_order_is_ignored():
    [result] = bybit(raw("bybit_order_option_docs.json"))
    assert isinstance(result, Ignored) and "option" in result.reason


def linear_order(**fields) -> dict:
    """The docs order frame as a linear BTCUSDT order of ours, with ``fields`` changed."""
    frame = load("bybit_order_option_docs.json")
    frame["data"][0].update({"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "apm-7", **fields})
    return frame


def test_bybit_linear_order():
    frame = linear_order(reduceOnly=True)
    entry = frame["data"][0]
    assert bybit(frame) == [
        OrderChange(
            exchange="bybit",
            symbol="BTC/USDT:USDT",
            client_order_id="apm-7",
            exchange_order_id=entry["orderId"],
            side="sell",
            status="closed",
            filled_qty=D(entry["cumExecQty"]),
            avg_price=D(entry["avgPrice"]),
            requested_qty=D(entry["qty"]),
            reduce_only=True,
            time=ms(entry["updatedTime"]),
        )
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("New", "open"),
        ("PartiallyFilled", "open"),
        ("Untriggered", "open"),
        ("Triggered", "open"),
        ("Filled", "closed"),
        ("Cancelled", "canceled"),
        ("PartiallyFilledCanceled", "canceled"),
        ("Deactivated", "canceled"),
        ("Rejected", "rejected"),
    ],
)
def test_bybit_order_statuses(status, expected):
    [order] = bybit(linear_order(orderStatus=status))
    assert order.status == expected


@pytest.mark.parametrize("avg", ["", "0"])
def test_bybit_unfilled_order_has_no_average_price(avg):
    [order] = bybit(linear_order(orderStatus="New", cumExecQty="0", avgPrice=avg, orderLinkId=""))
    assert (order.avg_price, order.filled_qty, order.client_order_id) == (None, D("0"), None)


@pytest.mark.parametrize("name", ["bybit_execution_docs.json", "bybit_execution_linear_docs.json"])
def test_bybit_docs_executions(name):
    entry = load(name)["data"][0]
    assert bybit(raw(name)) == [
        Execution(
            exchange="bybit",
            symbol=unified_symbol(entry["symbol"]),
            fill_id=entry["execId"],
            exchange_order_id=entry["orderId"],
            client_order_id=None,  # orderLinkId ""
            side=entry["side"].lower(),
            qty=D(entry["execQty"]),
            price=D(entry["execPrice"]),
            time=ms(entry["execTime"]),
        )
    ]


def test_bybit_non_trade_executions_are_ignored_next_to_trades():
    frame = load("bybit_execution_linear_docs.json")
    trade = frame["data"][0]
    frame["data"] = [trade] + [dict(trade, execType=kind, execId=kind) for kind in ("Funding", "AdlTrade", "BustTrade")]
    fill, *others = bybit(frame)
    assert isinstance(fill, Execution) and fill.fill_id == trade["execId"]
    assert [type(o) for o in others] == [Ignored] * 3
    assert [o.reason.split()[1] for o in others] == ["Funding", "AdlTrade", "BustTrade"]


def test_bybit_other_categories_and_topics_are_ignored():
    frame = load("bybit_execution_linear_docs.json")
    spot = copy.deepcopy(frame)
    spot["data"][0]["category"] = "spot"
    [result] = bybit(spot)
    assert isinstance(result, Ignored) and "spot" in result.reason
    for topic in ("execution.spot", "execution.fast", "wallet", "greeks"):
        [result] = bybit(dict(frame, topic=topic))
        assert isinstance(result, Ignored) and topic in result.reason
    linear_topic = bybit(dict(frame, topic="execution.linear"))
    assert linear_topic == bybit(frame) and isinstance(linear_topic[0], Execution)


def test_bybit_entry_without_category_on_the_linear_topic():
    """``category`` is listed for every entry; on ``execution.linear`` it is implied."""
    frame = load("bybit_execution_linear_docs.json")
    del frame["data"][0]["category"]
    [fill] = bybit(dict(frame, topic="execution.linear"))
    assert isinstance(fill, Execution) and fill.price == D("95900.1")
    [result] = bybit(frame)  # the all-in-one topic: no way to tell
    assert isinstance(result, Malformed) and "category" in result.detail


def test_bybit_usdc_perpetual_is_not_ours():
    frame = one_way_position(side="Buy", size="1", entryPrice="28000", symbol="BTCPERP")
    [result] = bybit(frame)
    assert isinstance(result, Ignored) and "BTCPERP" in result.reason


# -- by exchange name ----------------------------------------------------------------------


def test_make_account_protocol():
    assert isinstance(make_account_protocol("bybit"), BybitAccountProtocol)
    assert isinstance(make_account_protocol("binanceusdm"), BinanceAccountProtocol)
    assert isinstance(make_account_protocol("binance"), BinanceAccountProtocol)
    assert make_account_protocol("bybit") is not make_account_protocol("bybit")  # own ping counter
    assert make_account_protocol("bybit").exchange == "bybit"
    assert make_account_protocol("binance").exchange == "binanceusdm"
    with pytest.raises(ValueError, match="okx"):
        make_account_protocol("okx")
