"""Hostile and malformed frames against the private-stream parsers (no I/O).

The frames are the real ones of ``tests/conformance/private`` with bad values put in
(each test says which). What must hold:

* ``parse`` never raises, for any text, bytes or JSON;
* a frame with any malformed entry gives exactly one :class:`Malformed` — nothing of
  the frame's other, valid entries — whose ``reason`` is short and stable and whose
  ``detail`` names the field;
* everything returned is one of the documented result types, with Decimal money and
  aware UTC times.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.account_binance import BinanceAccountProtocol
from feeds.account_bybit import BybitAccountProtocol
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

CORPUS = Path(__file__).parent / "conformance" / "private"
RESULT_TYPES = (
    PositionChange,
    OrderChange,
    Execution,
    AuthResult,
    Subscribed,
    ListenKeyExpired,
    Pong,
    Ignored,
    Malformed,
)


def load(name: str):
    return json.loads((CORPUS / name).read_text(encoding="utf-8"))


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def binance(frame):
    return BinanceAccountProtocol().parse(frame if isinstance(frame, (str, bytes)) else dumps(frame))


def bybit(frame):
    return BybitAccountProtocol().parse(frame if isinstance(frame, (str, bytes)) else dumps(frame))


def malformed(results, reason: str, *in_detail: str) -> Malformed:
    """The one result of a rejected frame, with its reason and the words its detail names."""
    assert len(results) == 1, results
    [result] = results
    assert isinstance(result, Malformed), result
    assert result.reason == reason
    for word in in_detail:
        assert word in result.detail, (word, result.detail)
    return result


def two_binance_positions() -> dict:
    """The captured one-way short, twice over (BTCUSDT, then XEMUSDT): both valid."""
    frame = load("binance_account_update_short_ccxt.json")
    second = dict(load("binance_account_update_cross_short_capture.json")["a"]["P"][0])
    frame["a"]["P"].append(second)
    return frame


def two_bybit_positions() -> dict:
    """The docs position frame made one-way, with a second (ETHUSDT) entry: both valid."""
    frame = load("bybit_position_hedge_flat_docs.json")
    frame["data"][0].update(positionIdx=0, side="Buy", size="1", entryPrice="28000")
    frame["data"].append(dict(frame["data"][0], symbol="ETHUSDT", side="Sell", size="2", entryPrice="1800"))
    return frame


# -- not JSON, not an object -------------------------------------------------------------------

GARBAGE = [
    "",
    "{",
    "null",
    "[]",
    "42",
    '"ACCOUNT_UPDATE"',
    b"\xff\xfe\x00",
    b"",
    "[" * 100_000,
    '{"a":' * 50_000,
    "NaN",
    '{"e": NaN}',
    "\x00",
]


@pytest.mark.parametrize("frame", GARBAGE)
def test_garbage_is_one_malformed(frame):
    for parse in (binance, bybit):
        [result] = parse(frame)
        assert isinstance(result, Malformed)
        assert result.reason in ("invalid JSON", "not a JSON object", "bad event")


def test_bytes_frames_parse_like_text():
    text = (CORPUS / "bybit_execution_linear_docs.json").read_text(encoding="utf-8")
    assert bybit(text.encode()) == bybit(text) and isinstance(bybit(text)[0], Execution)
    text = (CORPUS / "binance_account_update_short_ccxt.json").read_text(encoding="utf-8")
    assert binance(text.encode()) == binance(text) and isinstance(binance(text)[0], PositionChange)


# -- Binance ---------------------------------------------------------------------------------


def test_binance_two_valid_positions_give_two_changes():
    assert [type(r) for r in binance(two_binance_positions())] == [PositionChange, PositionChange]


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("pa", -0.089, "a.P[1].pa"),  # a JSON number
        ("pa", "1e3", "a.P[1].pa"),
        ("pa", "NaN", "a.P[1].pa"),
        ("pa", "", "a.P[1].pa"),
        ("pa", "1" * 25, "a.P[1].pa"),
        ("pa", None, "a.P[1].pa"),
        ("ep", 0.0297, "a.P[1].ep"),
        ("ep", "-0.0297", "a.P[1].ep"),
        ("ep", "Infinity", "a.P[1].ep"),
        ("ep", "0", "entry price"),  # open position, no entry price
        ("ps", "both", "a.P[1].ps"),
        ("ps", None, "a.P[1].ps"),
        ("s", 7, "a.P[1].s"),
        ("s", "", "a.P[1].s"),
        ("s", "btc usdt", "a.P[1].s"),
    ],
)
def test_binance_one_bad_position_spoils_the_whole_frame(field, value, named):
    frame = two_binance_positions()
    frame["a"]["P"][1][field] = value
    malformed(binance(frame), "bad position", named)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"T": None}, "T"),
        ({"T": -1}, "T"),
        ({"T": 10**20}, "T"),
        ({"T": True}, "T"),
        ({"T": 1.5e12}, "T"),
        ({"a": []}, "a is not"),
        ({"a": {"m": "ORDER", "P": {"s": "BTCUSDT"}}}, "a.P"),
        ({"a": {"m": 3, "P": []}}, "a.m"),
    ],
)
def test_binance_bad_account_update_envelope(change, named):
    frame = load("binance_account_update_short_ccxt.json") | change
    malformed(binance(frame), "bad position", named)


def test_binance_entry_that_is_not_an_object():
    frame = two_binance_positions()
    frame["a"]["P"][1] = ["XEMUSDT", "-3367"]
    malformed(binance(frame), "bad position", "a.P[1]")


def market_fill() -> dict:
    o = load("binance_order_market_fill_o_ccxt.json")
    return {"e": "ORDER_TRADE_UPDATE", "E": o["T"], "T": o["T"], "o": o}


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("L", 39444.2, "o.L"),  # a JSON number for a price
        ("L", "0", "o.L"),
        ("L", "-39444.20", "o.L"),
        ("l", "0", "o.l"),
        ("l", "nan", "o.l"),
        ("z", -1, "o.z"),
        ("q", "0x10", "o.q"),
        ("ap", 39444.2, "o.ap"),
        ("ap", "-1", "o.ap"),
        ("X", "NEW_INSURANCE", "o.X"),  # a status the parser does not know
        ("X", None, "o.X"),
        ("S", "buy", "o.S"),
        ("i", "3545765667", "o.i"),
        ("i", 0, "o.i"),
        ("t", None, "o.t"),
        ("T", "yesterday", "o.T"),
        ("R", "false", "o.R"),
        ("c", 12, "o.c"),
        ("x", "", "o.x"),
        ("s", ["BTCUSDT"], "o.s"),
    ],
)
def test_binance_bad_order_update_gives_neither_order_nor_fill(field, value, named):
    frame = market_fill()
    frame["o"][field] = value
    malformed(binance(frame), "bad order", named)


def test_binance_order_update_without_order_object():
    malformed(binance({"e": "ORDER_TRADE_UPDATE", "T": 1, "o": "filled"}), "bad order", "o is not")


@pytest.mark.parametrize("event", [None, 5, ["ACCOUNT_UPDATE"]])
def test_binance_frame_without_event_type(event):
    frame = load("binance_account_update_short_ccxt.json")
    frame["e"] = event
    malformed(binance(frame), "bad event", "(e)")


def test_binance_unknown_events_are_ignored():
    for event in ("MARGIN_CALL", "STRATEGY_UPDATE", "GRID_UPDATE", "x" * 500):
        [result] = binance({"e": event, "E": 1})
        assert isinstance(result, Ignored) and len(result.reason) < 80


# -- Bybit -----------------------------------------------------------------------------------


def test_bybit_two_valid_positions_give_two_changes():
    assert [r.side for r in bybit(two_bybit_positions())] == ["long", "short"]


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("size", 2, "data[1].size"),
        ("size", "-2", "data[1].size"),
        ("size", "2e0", "data[1].size"),
        ("entryPrice", 1800.0, "data[1].entryPrice"),
        ("entryPrice", "0", "entryPrice 0"),
        ("entryPrice", "NaN", "data[1].entryPrice"),
        ("side", "Short", "data[1].side"),
        ("side", None, "data[1].side"),
        ("side", "", "side ''"),  # size 2 but no side
        ("side", "None", "side 'None'"),
        ("positionIdx", "0", "data[1].positionIdx"),
        ("positionIdx", 3, "data[1].positionIdx"),
        ("positionIdx", False, "data[1].positionIdx"),
        ("updatedTime", "", "data[1].updatedTime"),
        ("updatedTime", "-1697682317038", "data[1].updatedTime"),
        ("updatedTime", "9" * 30, "data[1].updatedTime"),
        ("symbol", None, "data[1].symbol"),
        ("category", 1, "data[1].category"),
    ],
)
def test_bybit_one_bad_position_spoils_the_whole_frame(field, value, named):
    frame = two_bybit_positions()
    frame["data"][1][field] = value
    malformed(bybit(frame), "bad position", named)


def linear_order() -> dict:
    frame = load("bybit_order_option_docs.json")
    frame["data"][0].update(category="linear", symbol="BTCUSDT", orderLinkId="apm-7")
    return frame


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("orderStatus", "Expired", "orderStatus"),
        ("orderStatus", None, "orderStatus"),
        ("avgPrice", 75, "avgPrice"),
        ("avgPrice", "-75", "avgPrice"),
        ("cumExecQty", "", "cumExecQty"),
        ("qty", None, "qty"),
        ("orderId", "", "orderId"),
        ("orderLinkId", ["apm-7"], "orderLinkId"),
        ("reduceOnly", "true", "reduceOnly"),
        ("side", "sell", "side"),
        ("updatedTime", 1.672364262457e12, "updatedTime"),
    ],
)
def test_bybit_bad_order(field, value, named):
    frame = linear_order()
    frame["data"][0][field] = value
    malformed(bybit(frame), "bad order", named)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("execQty", "0", "execQty"),
        ("execQty", 0.5, "execQty"),
        ("execPrice", "0", "execPrice"),
        ("execPrice", "95900,1", "execPrice"),
        ("execId", "", "execId"),
        ("execTime", None, "execTime"),
        ("execType", None, "execType"),
        ("side", "", "side"),
    ],
)
def test_bybit_bad_execution_next_to_a_good_one(field, value, named):
    frame = load("bybit_execution_linear_docs.json")
    frame["data"].append(dict(frame["data"][0], execId="second"))
    frame["data"][1][field] = value
    malformed(bybit(frame), "bad execution", named)


@pytest.mark.parametrize("data", [None, {}, "[]", 3])
def test_bybit_data_that_is_not_a_list(data):
    frame = load("bybit_execution_linear_docs.json") | {"data": data}
    malformed(bybit(frame), "bad execution", "data is not a list")


def test_bybit_entries_that_are_not_objects():
    frame = load("bybit_execution_linear_docs.json")
    frame["data"].append("fill")
    malformed(bybit(frame), "bad execution", "data[1]")


def test_bybit_empty_data_is_ignored():
    [result] = bybit(load("bybit_execution_linear_docs.json") | {"data": []})
    assert isinstance(result, Ignored)


@pytest.mark.parametrize(
    "frame",
    [
        {"success": "true", "ret_msg": "", "op": "auth"},
        {"success": None, "ret_msg": "", "op": "subscribe"},
        {"success": True, "ret_msg": 0, "op": "auth"},
        {"ret_msg": "", "op": "auth"},
    ],
)
def test_bybit_bad_replies(frame):
    malformed(bybit(frame), "bad reply", frame["op"])


def test_bybit_topic_that_is_not_a_string():
    malformed(bybit({"topic": ["position"], "data": []}), "bad topic")


def test_bybit_unknown_replies_are_ignored():
    for frame in ({"op": "unsubscribe", "success": True}, {"conn_id": "x"}, {"op": {"deep": [1]}}):
        [result] = bybit(frame)
        assert isinstance(result, Ignored)


# -- properties ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["0", "-0", "1.5", "", "BTCUSDT", "Buy", "linear", "TRADE", "1697682317038"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

CORPUS_FRAMES = sorted(p.name for p in CORPUS.glob("*.json"))


def check_results(results) -> None:
    """The documented shape of any answer of ``parse``."""
    assert isinstance(results, list) and results
    assert all(isinstance(r, RESULT_TYPES) for r in results)
    if any(isinstance(r, Malformed) for r in results):
        assert len(results) == 1  # a rejected frame yields nothing else
    for r in results:
        if isinstance(r, (PositionChange, OrderChange, Execution)):
            assert r.time.tzinfo is UTC
            assert r.symbol.endswith("/USDT:USDT")
        if isinstance(r, PositionChange):
            assert type(r.qty) is Decimal and r.qty >= 0
            assert (r.side is None) == (r.qty == 0) == (r.entry_price is None)
            assert r.entry_price is None or r.entry_price > 0
        if isinstance(r, Execution):
            assert r.qty > 0 and r.price > 0 and r.fill_id
        if isinstance(r, Malformed):
            assert len(r.reason) <= 20 and len(r.raw) <= 210


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_never_raises_on_arbitrary_input(raw):
    check_results(binance(raw))
    check_results(bybit(raw))


@settings(max_examples=300)
@given(json_values)
def test_parse_never_raises_on_arbitrary_json(value):
    check_results(binance(dumps(value)))
    check_results(bybit(dumps(value)))


def leaves(obj, path=()):
    """Every (path, value) of a decoded JSON document."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from leaves(value, (*path, i))
    yield path, obj


@settings(max_examples=400)
@given(st.sampled_from(CORPUS_FRAMES), st.data())
def test_real_frames_with_one_value_replaced(name, data):
    """Any one value of a real frame (or a whole sub-tree) replaced by arbitrary JSON."""
    frame = load(name)
    paths = [path for path, _ in leaves(frame) if path]
    path = data.draw(st.sampled_from(paths))
    bad = copy.deepcopy(frame)
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    check_results(binance(dumps(bad)))
    check_results(bybit(dumps(bad)))
