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
