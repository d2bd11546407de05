"""Hostile frames against the sans-IO parsers and the suspect-quote guard (no I/O, no trio).

Real payloads come from ``tests/conformance`` (see its SOURCES.md); the
hostile frames here are derived from those shapes: same topics, same fields, bad values.

* A rejected frame leaves no trace: the per-symbol state after it equals the state
  before (property tests over arbitrary frame sequences, both exchanges).
* A tick only ever carries prices that the exchange really quoted in an accepted frame
  (a model of Bybit's snapshot/delta merge, fed only the accepted frames, agrees with
  every tick).
* :class:`feeds.guard.QuoteGuard` holds well-formed but absurd quotes until a second
  source agrees.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.binance import BinanceProtocol
from feeds.bybit import BybitProtocol
from feeds.guard import ACCEPTED, CONFIRMED, HELD, QuoteGuard, actionable_prices
from feeds.protocol import Alive, Malformed
from feeds.tick import Tick

FIXTURES = Path(__file__).parent / "conformance"
BTC = "BTC/USDT:USDT"
D = Decimal


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def bybit_frame(kind: str, data: dict, sid: str = "BTCUSDT") -> str:
    """A Bybit v5 ``tickers.<sid>`` frame shaped like the docs example (topic/type/data/cs/ts)."""
    return dumps({"topic": f"tickers.{sid}", "type": kind, "data": {"symbol": sid, **data}, "cs": 1, "ts": 1})


# --------------------------------------------------------------------------------------
# real payloads


def test_bybit_docs_snapshot_parses_exactly():
    p = BybitProtocol()
    t = p.parse(fixture("bybit_linear_ticker_snapshot_docs.json"), 1.0)
    assert isinstance(t, Tick) and t.symbol == BTC
    assert (t.bid, t.ask, t.last) == (D("17215.50"), D("17216.00"), D("17216.00"))
    assert p.mark_info(BTC)[0] == D("17217.33")


def test_bybit_captured_delta_repeating_a_price_is_no_change():
    snapshot, delta = fixture("bybit_linear_ticker_nknusdt_capture.jsonl").splitlines()
    p = BybitProtocol()
    t = p.parse(snapshot, 1.0)
    assert (t.bid, t.ask, t.last) == (D("0.13937"), D("0.13942"), D("0.13947"))
    assert p.parse(delta, 2.0) == Alive("NKN/USDT:USDT")  # only ask1Size changed


def test_binance_docs_payloads_parse_exactly():
    p = BinanceProtocol()
    t = p.parse(fixture("binance_usdm_book_ticker_docs.json"), 1.0)
    assert (t.symbol, t.bid, t.ask, t.last) == ("BNB/USDT:USDT", D("25.35190000"), D("25.36520000"), None)
    t = p.parse(fixture("binance_usdm_agg_trade_docs.json"), 2.0)
    assert (t.symbol, t.last) == (BTC, D("0.001"))


# --------------------------------------------------------------------------------------
# item 1: a rejected frame changes nothing


def test_bybit_crossed_delta_then_cleared_ask_keeps_the_quoted_bid():
    """The issue's sequence: crossed delta (rejected), then a delta clearing the ask."""
    p = BybitProtocol()
    p.parse(fixture("bybit_linear_ticker_snapshot_docs.json"), 1.0)
    before = p.state()
    r = p.parse(bybit_frame("delta", {"bid1Price": "18000.00"}), 2.0)  # above the ask 17216.00
    assert isinstance(r, Malformed) and r.reason == "crossed book"
    assert p.state() == before
    t = p.parse(bybit_frame("delta", {"ask1Price": ""}), 3.0)
    assert isinstance(t, Tick)
    assert t.bid == D("17215.50") and t.ask is None  # never the 18000.00 that was refused


@pytest.mark.parametrize("data, reason", [
    ({"bid1Price": "17000", "ask1Price": "abc"}, "bad price"),
    ({"bid1Price": "17000", "markPrice": "-1"}, "bad price"),
    ({"bid1Price": "17000", "lastPrice": 17000}, "bad price"),
    ({"bid1Price": "", "ask1Price": "", "lastPrice": ""}, "ticker without any price"),
    ({"bid1Price": "17300", "ask1Price": "17299"}, "crossed book"),
])
def test_bybit_rejected_delta_changes_no_field(data, reason):
    p = BybitProtocol()
    p.parse(fixture("bybit_linear_ticker_snapshot_docs.json"), 1.0)
    before = p.state()
    r = p.parse(bybit_frame("delta", data), 2.0)
    assert isinstance(r, Malformed) and r.reason == reason
    assert p.state() == before


def test_binance_rejected_frames_change_nothing():
    p = BinanceProtocol()
    book = json.loads(fixture("binance_usdm_book_ticker_docs.json"))
    p.parse(dumps(book), 1.0)
    p.parse(dumps({"e": "aggTrade", "E": 2, "s": "BNBUSDT", "p": "25.36", "q": "1", "T": 2, "m": True}), 2.0)
    before = p.state()
    for bad in (dict(book, b="26", a="25"), dict(book, b="0"), dict(book, a=""), dict(book, b=25.3)):
        assert isinstance(p.parse(dumps(bad), 3.0), Malformed)
        assert p.state() == before
    assert isinstance(p.parse(dumps({"e": "aggTrade", "s": "BNBUSDT", "p": "1e3"}), 4.0), Malformed)
    assert p.state() == before


def test_binance_book_ticker_without_prices_is_malformed_even_after_a_trade():
    """(Found by the property below.) A trade creates the symbol's state without a book; a
    bookTicker with no prices must not pass as "only a quantity changed"."""
    p = BinanceProtocol()
    p.parse(fixture("binance_usdm_agg_trade_docs.json"), 1.0)
    r = p.parse(dumps({"e": "bookTicker", "u": 1, "E": 1, "T": 1, "s": "BTCUSDT", "b": None, "B": "1", "a": None,
                       "A": "1"}), 2.0)
    assert isinstance(r, Malformed) and r.reason == "bad price"


# property: for any sequence of frames, a rejected frame leaves the state as it was, and
# every tick carries the prices of the accepted frames only

good_price = st.decimals(min_value=D("0.001"), max_value=D("1e6"), places=3).map(lambda d: format(d, "f"))
bad_price = st.one_of(
    st.sampled_from(["abc", "-1", "0", "0.000", "NaN", "1e5", " 1", "+1", ".5", "1" * 25]),
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=1),
)
field_value = st.one_of(good_price, good_price, bad_price, st.just(""), st.none())
PRICE_FIELDS = ("bid1Price", "ask1Price", "lastPrice", "markPrice")
bybit_data = st.fixed_dictionaries(
    {}, optional={**{f: field_value for f in PRICE_FIELDS},
                  "symbol": st.sampled_from(["BTCUSDT", "BTCUSDT", "ETHUSDT", 7])})
bybit_frames = st.one_of(
    st.builds(lambda kind, data: dumps({"topic": "tickers.BTCUSDT", "type": kind, "data": data, "cs": 1, "ts": 1}),
              st.sampled_from(["snapshot", "delta", "delta", "delta", "other"]), bybit_data),
    st.sampled_from(["not json", "[]", '{"topic":"tickers.BTCUSDT","type":"delta","data":[1]}',
                     '{"success":true,"ret_msg":"pong","op":"ping"}', '{"topic":"kline.1.BTCUSDT"}']),
)


def _bybit_model_apply(model: dict, frame: str) -> None:
    """Bybit's documented merge: a snapshot replaces, a delta changes only the fields it
    carries; "" clears a price (see SOURCES.md)."""
    msg = json.loads(frame)
    data = msg["data"]
    if msg["type"] == "snapshot":
        model.clear()
    for f in PRICE_FIELDS:
        v = data.get(f)
        if v is not None:
            model[f] = None if v == "" else D(v)


@settings(max_examples=400, deadline=None)
@given(st.lists(bybit_frames, min_size=1, max_size=12))
def test_bybit_rejected_frames_leave_no_trace_and_ticks_carry_quoted_prices(frames):
    p = BybitProtocol()
    p.subscribe_messages([BTC])
    model: dict = {}
    for raw in frames:
        before = p.state()
        r = p.parse(raw, 0.0)
        if isinstance(r, (Tick, Alive)):
            _bybit_model_apply(model, raw)
            if isinstance(r, Tick):
                assert (r.bid, r.ask, r.last) == (model.get("bid1Price"), model.get("ask1Price"),
                                                   model.get("lastPrice"))
                assert r.bid is None or r.ask is None or r.bid <= r.ask
        else:
            assert p.state() == before, r


binance_frames = st.one_of(
    st.builds(lambda b, a, s: dumps({"e": "bookTicker", "u": 1, "E": 1, "T": 1, "s": s, "b": b, "B": "1",
                                     "a": a, "A": "1"}),
              field_value, field_value, st.sampled_from(["BTCUSDT", "BTCUSDT", "X", 5])),
    st.builds(lambda p_, s: dumps({"e": "aggTrade", "E": 1, "s": s, "p": p_, "q": "1", "T": 1, "m": False}),
              field_value, st.sampled_from(["BTCUSDT", "BTCUSDT", ""])),
    st.sampled_from(["not json", "{}", '{"result":null,"id":1}', '{"stream":"x","data":5}']),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(binance_frames, min_size=1, max_size=12))
def test_binance_rejected_frames_leave_no_trace_and_ticks_carry_quoted_prices(frames):
    p = BinanceProtocol()
    p.subscribe_messages([BTC])
    model: dict = {}
    for raw in frames:
        before = p.state()
        r = p.parse(raw, 0.0)
        if isinstance(r, (Tick, Alive)):
            msg = json.loads(raw)
            if msg["e"] == "bookTicker":
                model["bid"], model["ask"] = D(msg["b"]), D(msg["a"])
            else:
                model["last"] = D(msg["p"])
            if isinstance(r, Tick):
                assert (r.bid, r.ask, r.last) == (model.get("bid"), model.get("ask"), model.get("last"))
                assert r.bid is None or r.ask is None or r.bid <= r.ask
        else:
            assert p.state() == before, r


# --------------------------------------------------------------------------------------
# item 7: suspect quotes


def tick(bid=None, ask=None, last=None, symbol=BTC) -> Tick:
    d = lambda v: None if v is None else D(v)  # noqa: E731
    return Tick("bybit", symbol, d(bid), d(ask), d(last), None, 0.0)


def no_mark(symbol):
    return None, 0


def test_actionable_prices_are_the_ones_a_close_could_use():
    assert actionable_prices(D(1), D(2), D(100)) == (D(1), D(2))  # last ignored with both sides
    assert actionable_prices(D(1), None, D(100)) == (D(1), D(100))  # last is the short's fallback
    assert actionable_prices(None, D(2), None) == (D(2),)
    assert actionable_prices(None, None, D(3)) == (D(3),)


def test_prices_in_range_are_accepted_and_the_anchor_follows():
    g = QuoteGuard()
    assert g.check(tick("100", "100.1"), 1) is ACCEPTED  # nothing to compare the first one with
    for i, bid in enumerate(["110", "125", "140", "160"], start=2):  # each step < 20 %
        assert g.check(tick(bid), i) is ACCEPTED
    assert g.anchor(BTC) == D(160) and g.suspects == 0


def test_a_quote_1000x_away_is_held_and_dropped_when_rest_disagrees():
    g = QuoteGuard()
    g.check(tick("95", "95.1", "95"), 1)
    assert g.check(tick("95000", "95100"), 2) is HELD
    assert g.check(tick("95000", "95100"), 3, stream_vouches=False) is HELD  # the stream alone is not enough
    assert g.held(BTC).bid == D(95000) and g.suspects == 2
    assert g.on_rest(BTC, D("95.02"), D("95.12"), None) is None  # REST: the real book
    assert g.held(BTC) is None and g.rejected == 1 and g.anchor(BTC) == D("95.02")


def test_a_real_jump_is_released_when_rest_agrees():
    g = QuoteGuard()
    g.check(tick("100", "100.1"), 1)
    assert g.check(tick("130", "130.1"), 2) is HELD
    released = g.on_rest(BTC, D("130.05"), D("130.15"), D("130.1"))
    assert released is not None and released.bid == D(130)
    assert g.confirmed == 1 and g.anchor(BTC) == D(130)
    assert g.check(tick("131"), 3) is ACCEPTED


def test_without_rest_the_next_tick_in_range_confirms():
    g = QuoteGuard()
    g.check(tick("100"), 1)
    assert g.check(tick("130"), 2, stream_vouches=True) is HELD
    assert g.check(tick("131"), 3, stream_vouches=True) is CONFIRMED
    assert g.anchor(BTC) == D(131) and g.confirmed == 1


def test_a_tick_back_in_range_supersedes_the_held_one():
    g = QuoteGuard()
    g.check(tick("100"), 1)
    assert g.check(tick("100000"), 2, stream_vouches=True) is HELD
    assert g.check(tick("100.5"), 3, stream_vouches=True) is ACCEPTED
    assert g.held(BTC) is None and g.rejected == 1


def test_a_far_next_tick_does_not_confirm_a_different_range():
    g = QuoteGuard()
    g.check(tick("100"), 1)
    g.check(tick("1000"), 2, stream_vouches=True)
    assert g.check(tick("100000"), 3, stream_vouches=True) is HELD
    assert g.held(BTC).bid == D(100000)


def test_the_mark_vouches_only_from_another_frame():
    g = QuoteGuard()
    g.check(tick("100"), 1)
    same_frame = lambda s: (D("130"), 2)  # noqa: E731 - the mark came in the very frame of the quote
    assert g.check(tick("130"), 2, stream_vouches=True, mark_info=same_frame) is HELD
    assert g.on_mark(BTC, same_frame) is None
    later = lambda s: (D("129.9"), 3)  # noqa: E731 - a later frame moved the mark there too
    released = g.on_mark(BTC, later)
    assert released is not None and released.bid == D(130) and g.confirmed == 1
    earlier = lambda s: (D("160"), 3)  # noqa: E731 - a mark known before the quote: not suspect at all
    assert g.check(tick("161"), 4, stream_vouches=True, mark_info=earlier) is ACCEPTED
    assert g.check(tick("1000"), 5, stream_vouches=False, mark_info=lambda s: (D("1000"), 1)) is HELD


def test_the_threshold_is_configurable():
    g = QuoteGuard("0.05")
    g.check(tick("100"), 1)
    assert g.check(tick("106"), 2) is HELD
    assert QuoteGuard().check(tick("106"), 1) is ACCEPTED
    with pytest.raises(ValueError):
        QuoteGuard("0")
    off = QuoteGuard(None)  # off: synthetic streams (benchmarks)
    off.check(tick("100"), 1)
    assert off.check(tick("100000"), 2) is ACCEPTED and off.suspects == 0


def test_last_counts_only_where_a_side_is_missing():
    g = QuoteGuard()
    g.check(tick("100", "100.1", "100"), 1)
    assert g.check(tick("100", "100.1", "999999"), 2) is ACCEPTED  # a close uses the book here
    assert g.check(tick("100", None, "999999"), 3) is HELD  # a short would fall back to last
