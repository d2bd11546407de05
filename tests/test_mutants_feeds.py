"""Feed-parser promises pinned down by mutation testing (``make mutate``).

Sans-IO, like tests/test_feeds_parsing.py: the protocol objects are fed text frames.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from decimal import Decimal

from feeds.binance import BinanceProtocol
from feeds.bybit import BybitProtocol
from feeds.protocol import Alive, Malformed
from feeds.tick import Tick

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def binance() -> BinanceProtocol:
    p = BinanceProtocol()
    p.subscribe_messages([BTC, ETH])
    return p


def bybit() -> BybitProtocol:
    p = BybitProtocol()
    p.subscribe_messages([BTC, ETH])
    return p


BOOK = {"e": "bookTicker", "u": 400900217, "E": 1568014460893, "T": 1568014460891, "s": "BTCUSDT",
        "b": "25.35190000", "B": "31.21000000", "a": "25.36520000", "A": "40.66000000"}


def trade(**kw) -> str:
    msg = {"e": "aggTrade", "s": "BTCUSDT", "a": 5933014, "p": "25.36", "q": "100", "f": 100, "l": 105, "m": True}
    msg.update(kw)
    return dumps({k: v for k, v in msg.items() if v is not None})


# --- Binance aggTrade --------------------------------------------------------------------

def test_binance_trade_tick_names_its_exchange_and_arrival():
    t = binance().parse(trade(E=1_700_000_000_123, T=1_700_000_000_120), 42.5)
    assert isinstance(t, Tick)
    assert t.exchange == "binanceusdm" and t.symbol == BTC and t.received_at == 42.5
    assert t.last == Decimal("25.36")


def test_binance_trade_time_is_the_event_time_else_the_trade_time():
    p = binance()
    t = p.parse(trade(E=1_700_000_000_123, T=1_700_000_000_120), 1.0)
    assert t.exchange_ts == at_ms(1_700_000_000_123)
    t = p.parse(trade(p="25.37", T=1_700_000_000_456), 2.0)  # no event time: the trade time
    assert t.exchange_ts == at_ms(1_700_000_000_456)
    t = p.parse(trade(p="25.38"), 3.0)  # neither: unknown
    assert isinstance(t, Tick) and t.exchange_ts is None


def test_binance_book_time_is_the_event_time_else_the_transaction_time():
    p = binance()
    assert p.parse(dumps(BOOK), 1.0).exchange_ts == at_ms(1568014460893)
    no_e = {k: v for k, v in BOOK.items() if k != "E"}
    assert p.parse(dumps(dict(no_e, b="25.3")), 2.0).exchange_ts == at_ms(1568014460891)


def test_binance_a_bad_trade_price_is_malformed_and_names_the_field():
    r = binance().parse(trade(p="abc"), 1.0)
    assert isinstance(r, Malformed) and r.reason == "bad price"
    assert re.search(r"\bprice\b", r.detail), r.detail


def test_binance_unsubscribe_forgets_the_last_prices():
    p = binance()
    assert isinstance(p.parse(dumps(BOOK), 1.0), Tick)
    assert isinstance(p.parse(trade(E=1), 1.5), Tick)
    p.unsubscribe_messages([BTC])
    p.subscribe_messages([BTC])
    # a fresh subscription starts from nothing: the same prices are news again
    t = p.parse(dumps(BOOK), 2.0)
    assert isinstance(t, Tick) and t.last is None
    assert isinstance(p.parse(trade(E=2), 3.0), Tick)


# --- Bybit mark price --------------------------------------------------------------------

def test_bybit_mark_of_an_unknown_symbol_is_unknown():
    p = bybit()
    assert p.mark_price("SOLUSDT") is None
    assert p.mark_info("SOL/USDT:USDT") == (None, 0)
    assert p.mark_info("not-a-symbol") == (None, 0)


def test_bybit_mark_info_without_a_mark_is_unknown():
    p = bybit()
    snap = {"symbol": "BTCUSDT", "lastPrice": "100", "bid1Price": "99.5", "ask1Price": "100.5"}
    assert isinstance(p.parse(dumps({"topic": "tickers.BTCUSDT", "type": "snapshot", "ts": 1, "data": snap}), 1.0),
                      Tick)
    assert p.mark_info(BTC) == (None, 0)
    assert p.mark_price("BTCUSDT") is None


def test_bybit_mark_info_tells_which_frame_set_the_mark():
    p = bybit()
    snap = {"symbol": "BTCUSDT", "lastPrice": "100", "bid1Price": "99.5", "ask1Price": "100.5", "markPrice": "100.1"}
    p.parse(dumps({"topic": "tickers.BTCUSDT", "type": "snapshot", "ts": 1, "data": snap}), 1.0)
    first = p.frames
    p.parse(dumps({"topic": "tickers.BTCUSDT", "type": "delta", "ts": 2, "data": {"lastPrice": "100.2"}}), 2.0)
    assert p.mark_info(BTC) == (Decimal("100.1"), first)
    p.parse(dumps({"topic": "tickers.BTCUSDT", "type": "delta", "ts": 3, "data": {"markPrice": "100.3"}}), 3.0)
    assert p.mark_info(BTC) == (Decimal("100.3"), p.frames)


def test_binance_unsubscribe_keeps_the_other_symbols():
    p = binance()
    p.parse(dumps(BOOK), 1.0)
    p.parse(dumps(dict(BOOK, s="ETHUSDT")), 1.0)
    p.unsubscribe_messages([ETH])
    assert p.parse(dumps(dict(BOOK, B="2")), 2.0) == Alive(BTC)


# --- every rejected frame is reported with its category, the frame and what exactly ---------

from feeds.protocol import Ack, Pong, RequestError  # noqa: E402


def snap(data: dict, kind="snapshot", topic="tickers.BTCUSDT") -> str:
    return dumps({"topic": topic, "type": kind, "ts": 1, "data": data})


PRICES = {"symbol": "BTCUSDT", "lastPrice": "100", "bid1Price": "99.5", "ask1Price": "100.5", "markPrice": "100.1"}

BYBIT_BAD = [
    ("not json", "invalid JSON", ""),
    ("[1]", "not a JSON object", ""),
    ('{"topic": 5}', "topic is not a string", ""),
    ('{"topic":"tickers.BTCUSDT","type":"snapshot","data":[1]}', "ticker data is not an object", ""),
    (snap(PRICES, kind="weird"), "unknown ticker type", "weird"),
    (snap(dict(PRICES, symbol="ETHUSDT")), "data.symbol does not match the topic", ""),
    (snap(dict(PRICES, bid1Price="x")), "bad price", "bid1Price"),
    (snap(dict(PRICES, ask1Price="x")), "bad price", "ask1Price"),
    (snap(dict(PRICES, lastPrice="x")), "bad price", "lastPrice"),
    (snap(dict(PRICES, markPrice="x")), "bad price", "markPrice"),
    (snap(dict(PRICES, bid1Price="101")), "crossed book", "101"),
    (snap({"symbol": "BTCUSDT", "markPrice": "1"}), "ticker without any price", ""),
    ('{"op":"subscribe","req_id":"1"}', "unexpected message", ""),
]


def test_bybit_rejections_carry_the_frame_and_name_what_was_wrong():
    for frame, reason, named in BYBIT_BAD:
        r = bybit().parse(frame, 1.0)
        assert isinstance(r, Malformed) and r.reason == reason and r.raw == frame, (frame, r)
        if named:
            assert re.search(rf"(^|\W){re.escape(named)}(\W|$)", r.detail), (frame, r)


def book(**kw) -> str:
    return dumps({k: v for k, v in dict(BOOK, **kw).items() if v is not None})


BINANCE_BAD = [
    ("not json", "invalid JSON", ""),
    ("[1]", "not a JSON object", ""),
    ('{"stream":"btcusdt@bookTicker","data":5}', "combined-stream data is not an object", ""),
    (book(b="x"), "bad price", "bid"),
    (book(a="x"), "bad price", "ask"),
    (book(b="30"), "crossed book", "30"),
    (book(s=None), "bad symbol", ""),
    (trade(s=7), "bad symbol", ""),
    ('{"id": 99}', "unexpected message", ""),
]


def test_binance_rejections_carry_the_frame_and_name_what_was_wrong():
    for frame, reason, named in BINANCE_BAD:
        r = binance().parse(frame, 1.0)
        assert isinstance(r, Malformed) and r.reason == reason and r.raw == frame, (frame, r)
        if named:
            assert re.search(rf"(^|\W){re.escape(named)}(\W|$)", r.detail), (frame, r)
        if reason == "bad symbol":
            assert "missing" in r.detail


def test_every_frame_is_counted():
    for p, frames in ((bybit(), [snap(PRICES), "junk", '{"op":"pong"}']), (binance(), [dumps(BOOK), "junk", "{}"])):
        for frame in frames:
            p.parse(frame, 1.0)
        assert p.frames == 3


# --- Bybit details ------------------------------------------------------------------------------

def test_bybit_a_locked_book_is_not_crossed():
    t = bybit().parse(snap(dict(PRICES, bid1Price="100", ask1Price="100")), 1.0)
    assert isinstance(t, Tick) and t.bid == t.ask == Decimal(100)


def test_bybit_a_repeated_last_or_mark_is_not_news():
    p = bybit()
    p.parse(snap(PRICES), 1.0)
    first = p.frames
    assert p.parse(snap({"lastPrice": "100", "markPrice": "100.1"}, kind="delta"), 2.0) == Alive(BTC)
    assert p.mark_info(BTC) == (Decimal("100.1"), first)


def test_bybit_refusals_and_pongs():
    p = BybitProtocol()
    (sub,) = p.subscribe_messages([BTC])
    rid = json.loads(sub)["req_id"]
    assert p.parse(dumps({"success": False, "op": "subscribe", "req_id": rid}), 1.0) == \
        RequestError("subscribe", "", rid, symbols=(BTC,))
    assert p.parse(dumps({"success": True, "op": "ping", "ret_msg": "", "req_id": "7"}), 1.0) == Ack("ping", "7")
    assert p.parse(dumps({"success": True, "op": "ping", "ret_msg": "pong", "req_id": "8"}), 1.0) == Pong("8")


# --- Binance details ----------------------------------------------------------------------------

def test_binance_refusals_keep_their_message_code_and_request():
    p = BinanceProtocol()
    (sub,) = p.subscribe_messages([BTC])
    rid = json.loads(sub)["id"]
    r = p.parse(dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": rid}), 1.0)
    assert r == RequestError("SUBSCRIBE", "Invalid request (params ['btcusdt@bookTicker', 'btcusdt@aggTrade'])",
                             str(rid), 2, symbols=(BTC,))
    # older servers: code and msg at the top; an unknown request id is still reported
    r = p.parse(dumps({"code": "x", "msg": "Bad", "id": 77}), 1.0)
    assert r == RequestError("request", "Bad", "77", None)
    # code alone is not an error reply
    assert isinstance(p.parse(dumps({"code": 2, "id": 78}), 1.0), Malformed)
    r = p.parse(dumps({"error": {"code": 3, "msg": "x"}, "id": {"a": 1}}), 1.0)
    assert isinstance(r, RequestError) and r.req_id is None
    r = p.parse(dumps({"error": {"code": 3, "msg": "x"}}), 1.0)
    assert isinstance(r, RequestError) and r.req_id is None


def test_binance_a_data_field_alone_is_not_a_combined_stream_wrapper():
    r = binance().parse(dumps(dict(BOOK, data=5)), 1.0)
    assert isinstance(r, Tick)


def test_binance_a_book_ticker_is_recognised_without_its_event_type():
    spot_like = {"u": 1, "s": "BTCUSDT", "b": "25.3", "B": "1", "a": "25.4", "A": "1"}
    assert isinstance(binance().parse(dumps(spot_like), 1.0), Tick)
    no_qty = {"u": 1, "s": "BTCUSDT", "b": "25.3", "a": "25.4"}
    assert isinstance(binance().parse(dumps(no_qty), 1.0), Tick)


def test_binance_many_symbols_are_split_into_requests_of_at_most_a_hundred_streams():
    p = BinanceProtocol()
    symbols = [f"C{i}/USDT:USDT" for i in range(120)]
    msgs = [json.loads(m) for m in p.subscribe_messages(symbols)]
    assert [len(m["params"]) for m in msgs] == [100, 100, 40]
    assert len({m["id"] for m in msgs}) == 3
    p1 = BinanceProtocol(with_last=False)
    msgs = [json.loads(m) for m in p1.subscribe_messages(symbols)]
    assert [len(m["params"]) for m in msgs] == [100, 20]


def test_binance_book_updates_keep_the_last_trade_price():
    p = binance()
    p.parse(trade(E=1), 1.0)
    p.parse(dumps(BOOK), 2.0)
    t = p.parse(dumps(dict(BOOK, b="25.3")), 3.0)
    assert t.last == Decimal("25.36")


# --- the exact frames sent, and the reasons given ----------------------------------------------

from feeds.protocol import Ignored  # noqa: E402


def test_binance_requests_are_compact_json_numbered_from_one():
    p = BinanceProtocol()
    assert p.subscribe_messages([BTC]) == [
        '{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","btcusdt@aggTrade"],"id":1}']
    assert p.unsubscribe_messages([BTC]) == [
        '{"method":"UNSUBSCRIBE","params":["btcusdt@bookTicker","btcusdt@aggTrade"],"id":2}']


def test_bybit_requests_and_pings_are_compact_json_numbered_from_one():
    p = BybitProtocol()
    assert p.subscribe_messages([BTC]) == ['{"op":"subscribe","req_id":"1","args":["tickers.BTCUSDT"]}']
    assert p.ping_message() == '{"op":"ping","req_id":"ping-2"}'
    assert p.unsubscribe_messages([BTC]) == ['{"op":"unsubscribe","req_id":"3","args":["tickers.BTCUSDT"]}']


def test_binance_another_event_is_ignored_and_says_so():
    assert binance().parse(dumps({"e": "markPriceUpdate", "s": "BTCUSDT", "p": "1"}), 1.0) == \
        Ignored("unexpected event")


def test_binance_a_missing_symbol_is_described_exactly():
    r = binance().parse(book(s=None), 1.0)
    assert (r.reason, r.detail) == ("bad symbol", "missing or not a string")


def test_bybit_another_topic_is_ignored_and_says_so():
    assert bybit().parse(dumps({"topic": "orderbook.1.BTCUSDT", "type": "snapshot", "data": {}}), 1.0) == \
        Ignored("unexpected topic")


def test_bybit_an_empty_price_clears_it_and_is_remembered_as_empty():
    p = bybit()
    p.parse(snap(PRICES), 1.0)
    t = p.parse(snap({"bid1Price": ""}, kind="delta"), 2.0)
    assert isinstance(t, Tick) and t.bid is None and t.ask == Decimal("100.5")
    assert (p.state()["BTCUSDT"].bid_s, p.state()["BTCUSDT"].bid) == ("", None)
    assert p.parse(snap({"bid1Price": ""}, kind="delta"), 3.0) == Alive(BTC)  # still empty: no news


# --- the shared protocol's symbol map --------------------------------------------------------------

USDC = "BTC/USDC:USDC"  # its id, BTCUSDC, is not one the USDT fallback can read back


def test_a_subscribed_symbol_is_read_back_by_its_id_and_forgotten_on_unsubscribe():
    for p, frame in ((binance(), book(s="BTCUSDC")), (bybit(), snap(dict(PRICES, symbol="BTCUSDC"), topic="tickers.BTCUSDC"))):
        p.unsubscribe_messages(["DOGE/USDT:USDT"])  # never subscribed: nothing to forget, no error
        p.subscribe_messages([USDC])
        t = p.parse(frame, 1.0)
        assert isinstance(t, Tick) and t.symbol == USDC, (p, t)
        p.unsubscribe_messages([USDC])
        r = p.parse(frame, 2.0)
        assert isinstance(r, Malformed) and r.reason == "bad symbol" and "BTCUSDC" in r.detail, (p, r)


def test_binance_streams_no_mark_price_so_no_frame_set_one():
    p = binance()
    assert isinstance(p.parse(dumps(BOOK), 1.0), Tick)
    assert p.mark_info(BTC) == (None, 0)
