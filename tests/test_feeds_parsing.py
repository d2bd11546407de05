"""Sans-IO tests of the exchange stream protocols (feeds.bybit, feeds.binance).

No I/O, no trio: the protocol objects are plain state machines fed with text frames.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.binance import BinanceProtocol
from feeds.bybit import BybitProtocol
from feeds.feed import make_protocol
from feeds.protocol import Ack, Alive, Ignored, Malformed, Pong, RequestError, parse_price
from feeds.tick import Tick

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def bybit_msg(kind: str, data: dict, *, symbol_id: str = "BTCUSDT", ts: int = 1673853746003, cs: int = 1) -> str:
    return dumps({"topic": f"tickers.{symbol_id}", "type": kind, "ts": ts, "cs": cs, "data": data})


SNAPSHOT = {
    "symbol": "BTCUSDT",
    "tickDirection": "PlusTick",
    "price24hPcnt": "0.017103",
    "lastPrice": "17216.00",
    "prevPrice24h": "16926.50",
    "highPrice24h": "17281.50",
    "lowPrice24h": "16915.00",
    "markPrice": "17217.33",
    "indexPrice": "17227.36",
    "openInterest": "68744.761",
    "turnover24h": "1570383121.943499",
    "volume24h": "91705.276",
    "nextFundingTime": "1673280000000",
    "fundingRate": "-0.000212",
    "bid1Price": "17215.50",
    "bid1Size": "84.489",
    "ask1Price": "17216.00",
    "ask1Size": "83.020",
}


@pytest.fixture
def bybit() -> BybitProtocol:
    p = BybitProtocol()
    p.subscribe_messages([BTC, ETH])
    return p


@pytest.fixture
def binance() -> BinanceProtocol:
    p = BinanceProtocol()
    p.subscribe_messages([BTC, ETH])
    return p


# --------------------------------------------------------------------------------------
# Bybit


def test_bybit_subscribe_unsubscribe_ping_messages():
    p = BybitProtocol()
    (sub,) = p.subscribe_messages([BTC, ETH])
    msg = json.loads(sub)
    assert msg["op"] == "subscribe"
    assert msg["args"] == ["tickers.BTCUSDT", "tickers.ETHUSDT"]
    assert isinstance(msg["req_id"], str) and msg["req_id"]
    (unsub,) = p.unsubscribe_messages([ETH])
    msg2 = json.loads(unsub)
    assert msg2["op"] == "unsubscribe" and msg2["args"] == ["tickers.ETHUSDT"]
    assert msg2["req_id"] != msg["req_id"]
    ping = json.loads(p.ping_message())
    assert ping["op"] == "ping" and ping["req_id"]
    assert p.heartbeat == "json"


def test_bybit_subscribe_is_chunked():
    p = BybitProtocol()
    symbols = [f"C{i}/USDT:USDT" for i in range(120)]
    msgs = [json.loads(m) for m in p.subscribe_messages(symbols)]
    assert len(msgs) > 1
    assert sum(len(m["args"]) for m in msgs) == 120
    assert len({m["req_id"] for m in msgs}) == len(msgs)


def test_bybit_snapshot_then_delta_merge(bybit):
    t = bybit.parse(bybit_msg("snapshot", SNAPSHOT), 5.0)
    assert t == Tick(
        "bybit",
        BTC,
        Decimal("17215.50"),
        Decimal("17216.00"),
        Decimal("17216.00"),
        datetime(2023, 1, 16, 7, 22, 26, 3000, tzinfo=timezone.utc),
        5.0,
        "ws",
    )
    # a delta only carries what changed
    t2 = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "bid1Price": "17215.60"}, ts=1673853746103), 6.0)
    assert isinstance(t2, Tick)
    assert t2.bid == Decimal("17215.60")
    assert t2.ask == Decimal("17216.00") and t2.last == Decimal("17216.00")
    assert t2.received_at == 6.0
    assert t2.exchange_ts == datetime(2023, 1, 16, 7, 22, 26, 103000, tzinfo=timezone.utc)
    t3 = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "lastPrice": "17215.9", "ask1Price": "17216.1"}), 7.0)
    assert (t3.bid, t3.ask, t3.last) == (Decimal("17215.60"), Decimal("17216.1"), Decimal("17215.9"))


def test_bybit_delta_without_price_change_is_alive_not_tick(bybit):
    bybit.parse(bybit_msg("snapshot", SNAPSHOT), 1.0)
    r = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "openInterest": "1", "markPrice": "17300"}), 2.0)
    assert r == Alive(BTC)
    assert bybit.mark_price("BTCUSDT") == Decimal("17300")
    # same value re-sent: not a change either
    r = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "bid1Price": "17215.50"}), 3.0)
    assert r == Alive(BTC)


def test_bybit_new_snapshot_replaces_state(bybit):
    bybit.parse(bybit_msg("snapshot", SNAPSHOT), 1.0)
    snap2 = {"symbol": "BTCUSDT", "lastPrice": "100", "bid1Price": "99", "ask1Price": "101"}
    t = bybit.parse(bybit_msg("snapshot", snap2), 2.0)
    assert (t.bid, t.ask, t.last) == (Decimal("99"), Decimal("101"), Decimal("100"))
    # a snapshot always yields a tick, even if unchanged
    assert isinstance(bybit.parse(bybit_msg("snapshot", snap2), 3.0), Tick)


def test_bybit_snapshot_missing_fields_are_none(bybit):
    t = bybit.parse(bybit_msg("snapshot", {"symbol": "BTCUSDT", "lastPrice": "10"}), 1.0)
    assert (t.bid, t.ask, t.last) == (None, None, Decimal("10"))


def test_bybit_empty_string_clears_a_price(bybit):
    bybit.parse(bybit_msg("snapshot", SNAPSHOT), 1.0)
    t = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "bid1Price": ""}), 2.0)
    assert t.bid is None and t.ask == Decimal("17216.00")


def test_bybit_delta_before_snapshot_is_ignored_and_counted(bybit):
    r = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "bid1Price": "1"}), 1.0)
    assert r == Ignored("delta before snapshot")
    assert bybit.deltas_before_snapshot == 1
    # and it did not create state: a later delta is still before-snapshot
    bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "ask1Price": "2"}), 1.0)
    assert bybit.deltas_before_snapshot == 2
    assert isinstance(bybit.parse(bybit_msg("snapshot", SNAPSHOT), 2.0), Tick)


def test_bybit_reset_forgets_snapshots(bybit):
    bybit.parse(bybit_msg("snapshot", SNAPSHOT), 1.0)
    bybit.reset()  # new connection
    r = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "bid1Price": "1"}), 1.0)
    assert isinstance(r, Ignored)


def test_bybit_unsubscribe_forgets_snapshot(bybit):
    bybit.parse(bybit_msg("snapshot", SNAPSHOT), 1.0)
    bybit.unsubscribe_messages([BTC])
    assert isinstance(bybit.parse(bybit_msg("delta", {"bid1Price": "1"}), 1.0), Ignored)


def test_bybit_bad_delta_leaves_state_untouched(bybit):
    bybit.parse(bybit_msg("snapshot", SNAPSHOT), 1.0)
    r = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "bid1Price": "17000", "ask1Price": "abc"}), 2.0)
    assert isinstance(r, Malformed) and r.reason == "bad price"
    t = bybit.parse(bybit_msg("delta", {"symbol": "BTCUSDT", "lastPrice": "17216.5"}), 3.0)
    assert t.bid == Decimal("17215.50")  # the 17000 of the rejected delta was not applied


def test_bybit_crossed_book_is_malformed_and_leaves_no_trace(bybit):
    bybit.parse(bybit_msg("snapshot", SNAPSHOT), 1.0)
    before = bybit.state()
    r = bybit.parse(bybit_msg("delta", {"bid1Price": "17300"}), 2.0)
    assert isinstance(r, Malformed) and r.reason == "crossed book"
    assert bybit.state() == before  # the crossed bid was not merged
    t = bybit.parse(bybit_msg("delta", {"ask1Price": "17301"}), 3.0)
    assert (t.bid, t.ask) == (Decimal("17215.50"), Decimal("17301"))  # the bid the exchange quoted


def test_bybit_control_messages():
    p = BybitProtocol()
    assert p.parse('{"success":true,"ret_msg":"","conn_id":"c1","req_id":"7","op":"subscribe"}', 0) == Ack(
        "subscribe", "7"
    )
    assert p.parse('{"success":true,"ret_msg":"subscribe","conn_id":"c1","op":"subscribe"}', 0) == Ack(
        "subscribe", None
    )
    assert p.parse('{"success":true,"ret_msg":"","conn_id":"c","req_id":"8","op":"unsubscribe"}', 0) == Ack(
        "unsubscribe", "8"
    )
    # public linear pong, and the other shape Bybit uses on other channels
    assert p.parse('{"success":true,"ret_msg":"pong","conn_id":"c","req_id":"p1","op":"ping"}', 0) == Pong("p1")
    assert p.parse('{"success":true,"ret_msg":"pong","conn_id":"c","req_id":"","op":"ping"}', 0) == Pong(None)
    assert p.parse('{"op":"pong","args":["1675418560633"],"conn_id":"c"}', 0) == Pong(None)
    err = p.parse(
        '{"success":false,"ret_msg":"error:handler not found,topic:tickers.NOPEUSDT",'
        '"conn_id":"c","req_id":"9","op":"subscribe"}',
        0,
    )
    assert isinstance(err, RequestError)
    assert err.op == "subscribe" and err.req_id == "9" and "NOPEUSDT" in err.message
    assert err.symbols == ()  # not a request of ours


def test_bybit_refusal_names_the_symbols_of_the_request():
    p = BybitProtocol()
    (sub,) = p.subscribe_messages([BTC, "NOPE/USDT:USDT"])
    rid = json.loads(sub)["req_id"]
    err = p.parse(
        dumps({"success": False, "ret_msg": "error:handler not found,topic:tickers.NOPEUSDT", "conn_id": "c",
               "req_id": rid, "op": "subscribe"}),
        0,
    )
    assert isinstance(err, RequestError) and err.symbols == (BTC, "NOPE/USDT:USDT")
    # re-subscribing what is already there is not an error
    (again,) = p.subscribe_messages([BTC])
    rid2 = json.loads(again)["req_id"]
    ack = p.parse(
        dumps({"success": False, "ret_msg": "error:already subscribed,topic:tickers.BTCUSDT", "conn_id": "c",
               "req_id": rid2, "op": "subscribe"}),
        0,
    )
    assert ack == Ack("subscribe", rid2)
    assert p.pending == {}


def test_bybit_other_topic_is_ignored(bybit):
    r = bybit.parse(dumps({"topic": "orderbook.1.BTCUSDT", "type": "snapshot", "data": {}}), 0)
    assert isinstance(r, Ignored)


def test_bybit_symbol_mismatch_is_malformed(bybit):
    r = bybit.parse(bybit_msg("snapshot", dict(SNAPSHOT, symbol="ETHUSDT")), 0)
    assert isinstance(r, Malformed)


def test_bybit_unsubscribed_symbol_still_maps_to_unified():
    p = BybitProtocol()
    t = p.parse(bybit_msg("snapshot", dict(SNAPSHOT, symbol="SOLUSDT"), symbol_id="SOLUSDT"), 0)
    assert t.symbol == "SOL/USDT:USDT"


# --------------------------------------------------------------------------------------
# Binance USD-M


BOOK = {
    "e": "bookTicker",
    "u": 400900217,
    "E": 1568014460893,
    "T": 1568014460891,
    "s": "BTCUSDT",
    "b": "25.35190000",
    "B": "31.21000000",
    "a": "25.36520000",
    "A": "40.66000000",
}


def test_binance_subscribe_unsubscribe_messages():
    p = BinanceProtocol()
    (sub,) = p.subscribe_messages([BTC])
    msg = json.loads(sub)
    assert msg["method"] == "SUBSCRIBE"
    assert msg["params"] == ["btcusdt@bookTicker", "btcusdt@aggTrade"]
    assert isinstance(msg["id"], int)
    (unsub,) = p.unsubscribe_messages([BTC])
    msg2 = json.loads(unsub)
    assert msg2["method"] == "UNSUBSCRIBE" and msg2["params"] == msg["params"] and msg2["id"] != msg["id"]
    assert p.ping_message() is None and p.heartbeat == "ws"
    only_book = BinanceProtocol(with_last=False)
    assert json.loads(only_book.subscribe_messages([ETH])[0])["params"] == ["ethusdt@bookTicker"]


def test_binance_book_ticker(binance):
    t = binance.parse(dumps(BOOK), 3.5)
    assert t == Tick(
        "binanceusdm",
        BTC,
        Decimal("25.35190000"),
        Decimal("25.36520000"),
        None,
        datetime(2019, 9, 9, 7, 34, 20, 893000, tzinfo=timezone.utc),
        3.5,
    )
    # only a quantity changed: alive, no tick
    assert binance.parse(dumps(dict(BOOK, B="1")), 4.0) == Alive(BTC)


def test_binance_book_ticker_without_event_type(binance):
    spot_like = {k: v for k, v in BOOK.items() if k not in ("e", "E", "T")}
    t = binance.parse(dumps(spot_like), 1.0)
    assert isinstance(t, Tick) and t.exchange_ts is None and t.bid == Decimal("25.35190000")


def test_binance_agg_trade_sets_last_and_merges(binance):
    binance.parse(dumps(BOOK), 1.0)
    trade = {"e": "aggTrade", "E": 123456789, "s": "BTCUSDT", "a": 5933014, "p": "25.36", "q": "100",
             "f": 100, "l": 105, "T": 123456785, "m": True}
    t = binance.parse(dumps(trade), 2.0)
    assert (t.bid, t.ask, t.last) == (Decimal("25.35190000"), Decimal("25.36520000"), Decimal("25.36"))
    t2 = binance.parse(dumps(dict(BOOK, b="25.3", a="25.4")), 3.0)
    assert (t2.bid, t2.ask, t2.last) == (Decimal("25.3"), Decimal("25.4"), Decimal("25.36"))
    assert binance.parse(dumps(trade), 4.0) == Alive(BTC)


def test_binance_combined_stream_wrapper(binance):
    wrapped = {"stream": "btcusdt@bookTicker", "data": BOOK}
    t = binance.parse(dumps(wrapped), 1.0)
    assert isinstance(t, Tick) and t.symbol == BTC and t.ask == Decimal("25.36520000")
    assert isinstance(binance.parse('{"stream":"btcusdt@bookTicker","data":[1,2]}', 1.0), Malformed)


def test_binance_ack_and_errors():
    p = BinanceProtocol()
    (sub,) = p.subscribe_messages([BTC])
    rid = json.loads(sub)["id"]
    assert p.parse(dumps({"result": None, "id": rid}), 0) == Ack("SUBSCRIBE", str(rid))
    (sub2,) = p.subscribe_messages([ETH])
    rid2 = json.loads(sub2)["id"]
    err = p.parse(dumps({"error": {"code": 2, "msg": "Invalid request: unknown stream"}, "id": rid2}), 0)
    assert isinstance(err, RequestError) and err.code == 2 and err.op == "SUBSCRIBE"
    assert "ethusdt@bookTicker" in err.message
    assert err.symbols == (ETH,)
    assert p.pending == {}
    legacy = p.parse('{"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}', 0)
    assert isinstance(legacy, RequestError) and legacy.code == 3


def test_binance_crossed_book_is_malformed(binance):
    r = binance.parse(dumps(dict(BOOK, b="26", a="25")), 0)
    assert isinstance(r, Malformed) and r.reason == "crossed book"
    # a locked book (bid == ask) is accepted
    assert isinstance(binance.parse(dumps(dict(BOOK, b="25", a="25")), 0), Tick)


def test_binance_other_events_are_ignored(binance):
    r = binance.parse(dumps({"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "1"}), 0)
    assert isinstance(r, Ignored)


# --------------------------------------------------------------------------------------
# malformed input table


BYBIT_BAD = [
    ("not json", "invalid JSON"),
    ('{"topic": "tickers.BTCUSDT", ', "invalid JSON"),
    ("", "invalid JSON"),
    ("[1, 2, 3]", "not a JSON object"),
    ('"just a string"', "not a JSON object"),
    ("null", "not a JSON object"),
    ("{}", "unexpected message"),
    ('{"hello": "world"}', "unexpected message"),
    ('{"topic": 5}', "topic is not a string"),
    ('{"topic": "tickers.BTCUSDT", "type": "snapshot"}', "ticker data is not an object"),
    ('{"topic": "tickers.BTCUSDT", "type": "snapshot", "data": [1]}', "ticker data is not an object"),
    ('{"topic": "tickers.BTCUSDT", "type": "weird", "data": {}}', "unknown ticker type"),
    ('{"topic": "tickers.BTCUSDT", "data": {"lastPrice": "1"}}', "unknown ticker type"),
    ('{"topic": "tickers.BTCUSDT", "type": "snapshot", "data": {}}', "ticker without any price"),
    ('{"topic": "tickers.BTCUSDT", "type": "snapshot", "data": {"symbol": "BTCUSDT"}}', "ticker without any price"),
    ('{"topic": "tickers.", "type": "snapshot", "data": {"lastPrice": "1"}}', "bad symbol"),
    ('{"topic": "tickers.USDT", "type": "snapshot", "data": {"lastPrice": "1"}}', "bad symbol"),
]
PRICE_BAD = [
    "abc",
    "-1",
    "-0.5",
    "0",
    "0.000",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e5",
    "1E+2",
    " 1",
    "1 ",
    "1_000",
    "+1",
    ".5",
    "5.",
    "１２",  # fullwidth digits
    "1" * 21,  # absurdly large
    "1" * 5000,
    "0x10",
    "1,5",
]


@pytest.mark.parametrize("raw, reason", BYBIT_BAD)
def test_bybit_malformed_table(bybit, raw, reason):
    r = bybit.parse(raw, 0.0)
    assert isinstance(r, Malformed), r
    assert r.reason == reason


@pytest.mark.parametrize("price", PRICE_BAD)
@pytest.mark.parametrize("field", ["bid1Price", "ask1Price", "lastPrice", "markPrice"])
def test_bybit_bad_prices(bybit, field, price):
    data = {"symbol": "BTCUSDT", "bid1Price": "10", "ask1Price": "11", "lastPrice": "10.5"}
    data[field] = price
    r = bybit.parse(bybit_msg("snapshot", data), 0.0)
    assert isinstance(r, Malformed) and r.reason == "bad price", r


@pytest.mark.parametrize("value", [17216.5, 17216, True, None, ["1"], {"p": "1"}])
def test_prices_as_json_numbers_or_other_types_are_rejected(bybit, binance, value):
    r = bybit.parse(bybit_msg("snapshot", {"bid1Price": value, "ask1Price": "2", "lastPrice": "2"}), 0)
    if value is None:  # null == field absent in a snapshot
        assert isinstance(r, Tick) and r.bid is None
    else:
        assert isinstance(r, Malformed) and r.reason == "bad price"
    r2 = binance.parse(dumps(dict(BOOK, b=value)), 0)
    assert isinstance(r2, Malformed) and r2.reason == "bad price"


BINANCE_BAD = [
    ("not json", "invalid JSON"),
    ("[]", "not a JSON object"),
    ("{}", "unexpected message"),
    ('{"id": 1}', "unexpected message"),
    ('{"e": "bookTicker"}', "bad symbol"),
    ('{"e": "bookTicker", "s": 5, "b": "1", "a": "2"}', "bad symbol"),
    ('{"e": "bookTicker", "s": "BTCUSDT"}', "bad price"),
    ('{"e": "bookTicker", "s": "BTCUSDT", "b": "1"}', "bad price"),
    ('{"e": "bookTicker", "s": "BTCUSDT", "b": "abc", "a": "2"}', "bad price"),
    ('{"e": "bookTicker", "s": "BTCUSDT", "b": "0", "a": "2"}', "bad price"),
    ('{"e": "bookTicker", "s": "BTCUSDT", "b": "-1", "a": "2"}', "bad price"),
    ('{"e": "bookTicker", "s": "BTC", "b": "1", "a": "2"}', "bad symbol"),
    ('{"e": "aggTrade", "s": "BTCUSDT"}', "bad price"),
    ('{"e": "aggTrade", "s": "BTCUSDT", "p": "1e3"}', "bad price"),
    ('{"stream": "x", "data": "y"}', "combined-stream data is not an object"),
]


@pytest.mark.parametrize("raw, reason", BINANCE_BAD)
def test_binance_malformed_table(binance, raw, reason):
    r = binance.parse(raw, 0.0)
    assert isinstance(r, Malformed), r
    assert r.reason == reason


def test_bytes_frames_are_accepted(bybit, binance):
    assert isinstance(bybit.parse(bybit_msg("snapshot", SNAPSHOT).encode(), 0), Tick)
    assert isinstance(binance.parse(dumps(BOOK).encode(), 0), Tick)
    assert isinstance(bybit.parse(b"\xff\xfe garbage", 0), Malformed)


def test_huge_timestamps_do_not_break_parsing(bybit):
    t = bybit.parse(bybit_msg("snapshot", SNAPSHOT, ts=10**30), 0)
    assert isinstance(t, Tick) and t.exchange_ts is None
    t = bybit.parse(dumps({"topic": "tickers.BTCUSDT", "type": "snapshot", "ts": "soon", "data": SNAPSHOT}), 0)
    assert isinstance(t, Tick) and t.exchange_ts is None


# --------------------------------------------------------------------------------------
# Decimal exactness


EXACT = ["17216.00", "0.016918875", "0.00001671", "100", "98765432109876543210.123456789012345678",
         "0.10", "1.000000000000000000000000000001"]


@pytest.mark.parametrize("s", EXACT)
def test_prices_are_exact_decimals_from_the_string(bybit, binance, s):
    t = bybit.parse(bybit_msg("snapshot", {"symbol": "BTCUSDT", "lastPrice": s}), 0)
    assert type(t.last) is Decimal
    assert t.last.as_tuple() == Decimal(s).as_tuple()  # same digits, same exponent: trailing zeros kept
    b = binance.parse(dumps(dict(BOOK, b=s, a=s)), 0)
    assert b.bid.as_tuple() == Decimal(s).as_tuple() and b.ask.as_tuple() == Decimal(s).as_tuple()


@given(st.decimals(min_value=Decimal("1e-12"), max_value=Decimal("1e15"), allow_nan=False, allow_infinity=False,
                   places=8))
def test_any_plain_positive_decimal_roundtrips_exactly(d):
    s = format(d, "f")
    assert parse_price(s, "p").as_tuple() == Decimal(s).as_tuple()


# --------------------------------------------------------------------------------------
# never raises


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
price_like = st.one_of(
    st.text(alphabet="0123456789.-+eE abc", max_size=12),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(),
    st.floats(),
    st.none(),
)
bybit_shaped = st.fixed_dictionaries(
    {
        "topic": st.sampled_from(["tickers.BTCUSDT", "tickers.ETHUSDT", "tickers.", "tickers.XUSDT", "kline.1.X"]),
        "type": st.sampled_from(["snapshot", "delta", "other", None]),
        "ts": st.one_of(st.integers(), st.text(max_size=3), st.none()),
        "data": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "symbol": st.sampled_from(["BTCUSDT", "ETHUSDT", "X"]),
                    "bid1Price": price_like,
                    "ask1Price": price_like,
                    "lastPrice": price_like,
                    "markPrice": price_like,
                },
            ),
            json_values,
        ),
    }
)
binance_shaped = st.fixed_dictionaries(
    {},
    optional={
        "e": st.sampled_from(["bookTicker", "aggTrade", "other"]),
        "s": st.sampled_from(["BTCUSDT", "ETHUSDT", "X", ""]),
        "b": price_like,
        "a": price_like,
        "p": price_like,
        "E": st.one_of(st.integers(), st.none(), st.text(max_size=3)),
        "id": json_values,
        "result": json_values,
        "error": json_values,
        "code": json_values,
        "msg": json_values,
    },
)


def _check_result(r):
    assert isinstance(r, (Tick, Alive, Ack, Pong, RequestError, Ignored, Malformed))
    if isinstance(r, Tick):
        for p in (r.bid, r.ask, r.last):
            assert p is None or (type(p) is Decimal and p > 0)
        if r.bid is not None and r.ask is not None:
            assert r.bid <= r.ask


@settings(max_examples=300)
@given(st.one_of(st.text(), st.binary(), json_values.map(dumps)))
def test_parsers_never_raise_on_arbitrary_input(raw):
    for proto in (BybitProtocol(), BinanceProtocol()):
        proto.subscribe_messages([BTC])
        _check_result(proto.parse(raw, 0.0))


@settings(max_examples=500)
@given(st.lists(bybit_shaped.map(dumps), min_size=1, max_size=8))
def test_bybit_never_raises_on_ticker_shaped_sequences(frames):
    p = BybitProtocol()
    p.subscribe_messages([BTC])
    for raw in frames:
        _check_result(p.parse(raw, 0.0))


@settings(max_examples=500)
@given(st.lists(st.one_of(binance_shaped, st.builds(lambda d: {"stream": "x", "data": d}, binance_shaped))
                .map(dumps), min_size=1, max_size=8))
def test_binance_never_raises_on_ticker_shaped_sequences(frames):
    p = BinanceProtocol()
    p.subscribe_messages([BTC])
    for raw in frames:
        _check_result(p.parse(raw, 0.0))


def test_deeply_nested_json_does_not_raise(bybit, binance):
    raw = "[" * 100_000 + "]" * 100_000
    assert isinstance(bybit.parse(raw, 0), Malformed)
    assert isinstance(binance.parse('{"a":' * 10_000 + "1" + "}" * 10_000, 0), Malformed)


def test_make_protocol():
    assert isinstance(make_protocol("bybit"), BybitProtocol)
    assert isinstance(make_protocol("binanceusdm"), BinanceProtocol)
    with pytest.raises(ValueError):
        make_protocol("kraken")


# --------------------------------------------------------------------------------------
# Feed bookkeeping that needs no I/O


def test_feed_subscription_bookkeeping_without_io():
    import trio

    from feeds.feed import Feed

    feed = Feed("bybit", "ws://127.0.0.1:1/bybit/v5/public/linear")
    with pytest.raises(ValueError):
        feed.subscribe("BTCUSDT")  # not a unified symbol
    a = feed.subscribe(BTC)
    b = feed.subscribe(BTC)
    assert feed.symbols == {BTC} and feed.subscriber_count(BTC) == 2
    feed.unsubscribe(BTC, a)
    with pytest.raises(trio.EndOfChannel):
        a.receive_nowait()
    assert feed.symbols == {BTC}
    feed.unsubscribe(BTC, b)
    feed.unsubscribe(BTC, b)  # again: no-op
    feed.unsubscribe(ETH, b)  # unknown: no-op
    assert feed.symbols == set()


def test_feed_backoff_is_jittered_exponential_and_capped():
    from feeds.feed import Feed, FeedTimings

    feed = Feed("binanceusdm", "ws://x", timings=FeedTimings(reconnect_initial=0.5, reconnect_max=30.0))
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (100, 30.0)]:
        delays = [feed._backoff(attempt) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jittered
