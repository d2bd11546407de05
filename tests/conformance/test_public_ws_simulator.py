"""Conformance (b), public streams: the simulator's ticker messages have the real shape.

The feeds read Bybit's ``tickers.<symbol>`` (snapshot, then deltas) and Binance's
``<symbol>@bookTicker`` / ``<symbol>@aggTrade``; the exchanges' own example messages
are in this folder (SOURCES.md) and the parsers read them in
``tests/test_feeds_hostile_frames.py`` (conformance (a)). Here a real simulator on
loopback is subscribed over a real WebSocket, and each message it pushes must carry
the keys and JSON types of the example: a snapshot all of them; a Bybit delta only
keys the snapshot has ("If a response param is not found in the message, then its
value has not changed", Bybit docs, Ticker), each of the snapshot's type.
"""

from __future__ import annotations

import json
from functools import partial

import pytest
from trio_websocket import open_websocket_url

from simulator.server import serve_simulator
from tests.conformance.replay import corpus_bytes
from tests.conformance.shapes import shape_differences
from tests.support import within

BINANCE_BOOK_EXTRAS = {
    # The kept example (NautilusTrader's copy of the docs' payload) adds "st" and "ps",
    # which the docs' own example lacks; the feed never reads them.
    "$.st": "not in the docs' example (see SOURCES.md); never read",
    "$.ps": "not in the docs' example (see SOURCES.md); never read",
}


def load(name: str):
    return json.loads(corpus_bytes(name))


@pytest.fixture
async def sim(nursery):
    return await nursery.start(partial(serve_simulator, seed=5, tick_interval=None))


async def next_message(ws, wanted) -> dict:
    """The next JSON message for which ``wanted(message)`` is true (acks skipped)."""
    with within(30, "a stream message"):
        while True:
            message = json.loads(await ws.get_message())
            if wanted(message):
                return message


def assert_allowances_needed(real, got, allowed) -> None:
    raw = shape_differences(real, got)
    stale = [p for p in allowed if not any(d.startswith(p + ":") for d in raw)]
    assert not stale, f"allowances no longer needed: {stale}"


async def test_bybit_ticker_snapshot_and_delta_have_the_real_shape(sim):
    real = load("bybit_linear_ticker_snapshot_docs.json")
    async with open_websocket_url(sim.info()["bybit"]["ws"]) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "req_id": "1", "args": ["tickers.BTCUSDT"]}))
        snapshot = await next_message(ws, lambda m: m.get("type") == "snapshot")
        assert shape_differences(real, snapshot) == []
        sim.state.set_price("bybit", "BTCUSDT", bid="64000.1", ask="64000.5", last="64000.3")
        delta = await next_message(ws, lambda m: m.get("type") == "delta")
    assert set(delta) == set(snapshot)
    assert set(delta["data"]) <= set(snapshot["data"]) and "symbol" in delta["data"]
    only_present = {k: v for k, v in real["data"].items() if k in delta["data"]}
    assert shape_differences({**real, "type": "delta", "data": only_present}, delta) == []


async def test_binance_book_ticker_and_agg_trade_have_the_real_shape(sim):
    book_real, trade_real = load("binance_usdm_book_ticker_docs.json"), load("binance_usdm_agg_trade_docs.json")
    async with open_websocket_url(sim.info()["binanceusdm"]["ws"]) as ws:
        request = {"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker", "btcusdt@aggTrade"], "id": 1}
        await ws.send_message(json.dumps(request))
        book = await next_message(ws, lambda m: m.get("e") == "bookTicker")
        sim.state.set_price("binanceusdm", "BTCUSDT", bid="64000.1", ask="64000.5", last="64000.3")
        trade = await next_message(ws, lambda m: m.get("e") == "aggTrade")
    assert shape_differences(book_real, book, set(BINANCE_BOOK_EXTRAS)) == []
    assert_allowances_needed(book_real, book, BINANCE_BOOK_EXTRAS)
    assert shape_differences(trade_real, trade) == []


async def test_every_message_of_a_busy_stream_keeps_the_shape(sim):
    """Many price changes in a row: no message ever loses a key or changes a type."""
    real = load("bybit_linear_ticker_snapshot_docs.json")
    async with open_websocket_url(sim.info()["bybit"]["ws"]) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "req_id": "1", "args": ["tickers.BTCUSDT"]}))
        await next_message(ws, lambda m: m.get("type") == "snapshot")
        for step in range(20):
            sim.state.set_price("bybit", "BTCUSDT", bid=f"{64000 + step}.1", ask=f"{64000 + step}.5")
            delta = await next_message(ws, lambda m: m.get("type") == "delta")
            present = {k: v for k, v in real["data"].items() if k in delta["data"]}
            assert shape_differences({**real, "type": "delta", "data": present}, delta) == []
