"""Conformance (a), Bybit v5: the adapter reads every REST reply it relies on, through real ccxt.

A :class:`~exchanges.ccxt_adapter.CcxtExchange` built as the service builds it talks
to a loopback replay server (:mod:`tests.conformance.replay`) that answers each
endpoint with Bybit's own response example, unchanged (sources: SOURCES.md here). The
test checks the port's values field by field against the payload, and what was asked.

Where a documented example is for another category (the position list and the ticker
examples are inverse ``BTCUSD``), the *request* is adapted, never the payload, and the
test says so.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from urllib.parse import unquote

import pytest

from exchanges.errors import NonRetryableError
from exchanges.port import LotLimits
from tests.conformance.replay import adapter, corpus_bytes, replay  # noqa: F401 (fixtures)

BTC = "BTC/USDT:USDT"


def load(name: str):
    return json.loads(corpus_bytes(name))


def ms(value) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def serve_markets(replay) -> None:
    """``GET /v5/market/instruments-info``: the linear list, and the pre-market list when asked for it."""
    path = "/v5/market/instruments-info"
    replay.answer("GET", path, corpus_bytes("bybit_instruments_info_linear.json"))
    replay.answer("GET", path, corpus_bytes("bybit_instruments_info_prelaunch.json"), when={"status": "PreLaunch"})


async def test_market_list_gives_linear_symbols_lot_limits_and_tick(replay, adapter):
    serve_markets(replay)
    bybit = adapter("bybit")
    await bybit.load_markets()
    # both documented lists are USDT-settled linear perpetuals: both are kept
    assert bybit.symbols == {BTC, "BIO/USDT:USDT"}
    [row] = load("bybit_instruments_info_linear.json")["result"]["list"]
    lot = row["lotSizeFilter"]
    assert await bybit.close_limits(BTC) == LotLimits(
        step=D(lot["qtyStep"]),
        min_qty=D(lot["minOrderQty"]),
        max_market_qty=D(lot["maxMktOrderQty"]),
        max_limit_qty=D(lot["maxOrderQty"]),
    )
    assert bybit.price_tick(BTC) == D(row["priceFilter"]["tickSize"])
    asked = replay.seen("GET", "/v5/market/instruments-info")
    assert [r.query["category"] for r in asked] == [["linear"], ["linear"]]
    assert sorted(r.query.get("status", [""])[0] for r in asked) == ["", "PreLaunch"]


async def test_position_list_of_another_category_is_never_reported(replay, adapter):
    serve_markets(replay)
    replay.answer("GET", "/v5/position/list", corpus_bytes("bybit_position_list.json"))
    bybit = adapter("bybit")
    # The documented row is an inverse BTCUSD position (the field-by-field reading of
    # the same row under a linear id is in test_payloads.py): the adapter must not
    # report a market it cannot close, but the row still tells the position mode.
    assert await bybit.fetch_positions() == []
    assert await bybit.position_mode() == "one_way"  # positionIdx 0
    [first, *_] = replay.seen("GET", "/v5/position/list")
    assert (first.query["category"], first.query["settleCoin"], first.query["limit"]) == (["linear"], ["USDT"], ["200"])


async def test_execution_list_rows_are_fills_and_the_cursor_is_followed(replay, adapter):
    serve_markets(replay)
    replay.answer("GET", "/v5/execution/list", corpus_bytes("bybit_execution_list.json"))
    bybit = adapter("bybit")
    until = datetime(2022, 12, 30, tzinfo=UTC)
    fills = await bybit.fetch_fills(BTC, until - timedelta(days=1), until)
    page = load("bybit_execution_list.json")["result"]
    [row] = page["list"]
    [fill] = fills
    assert (fill.fill_id, fill.side, fill.qty, fill.price, fill.time) == (
        row["execId"],
        "buy",
        D(row["execQty"]),
        D(row["execPrice"]),
        ms(row["execTime"]),
    )
    assert fill.client_order_id is None  # orderLinkId "" (not ours)
    first, second = replay.seen("GET", "/v5/execution/list")  # the same cursor again ends the walk
    assert first.query["symbol"] == ["BTCUSDT"] and first.query["category"] == ["linear"]
    # the cursor goes back exactly as given (Bybit sends it URL-encoded already)
    assert "cursor" not in first.query and second.query["cursor"] == [unquote(page["nextPageCursor"])]


async def test_ticker_gives_bid_ask_last_and_the_reply_time(replay, adapter):
    replay.answer("GET", "/v5/market/tickers", corpus_bytes("bybit_market_tickers_inverse.json"))
    bybit = adapter("bybit")
    payload = load("bybit_market_tickers_inverse.json")
    [row] = payload["result"]["list"]
    # The documented example is the inverse BTCUSD ticker (the field table is shared by
    # linear and inverse): the request names BTCUSD so that the reply answers it.
    quote = await bybit.dialect.quote("BTC/USD:BTC", row["symbol"])
    assert (quote.bid, quote.ask, quote.last) == (D(row["bid1Price"]), D(row["ask1Price"]), D(row["lastPrice"]))
    assert quote.timestamp == ms(payload["time"])
    [asked] = replay.seen("GET", "/v5/market/tickers")
    assert asked.query == {"category": ["linear"], "symbol": ["BTCUSD"]}


async def test_order_create_reply_then_lookup_in_open_orders_then_history(replay, adapter):
    serve_markets(replay)
    created = load("bybit_order_create.json")["result"]
    replay.answer("POST", "/v5/order/create", corpus_bytes("bybit_order_create.json"))
    replay.answer("GET", "/v5/order/realtime", corpus_bytes("bybit_order_realtime.json"))
    replay.answer("GET", "/v5/order/history", corpus_bytes("bybit_order_history.json"))
    bybit = adapter("bybit")
    result = await bybit.create_close_order(BTC, "long", D("0.0105"), created["orderLinkId"])
    # the create reply carries ids only; the order is in neither documented list: open, unknown fill
    assert (result.client_order_id, result.exchange_order_id) == (created["orderLinkId"], created["orderId"])
    assert (result.status, result.filled_qty, result.avg_price, result.requested_qty) == ("open", 0, None, D("0.010"))
    [sent] = replay.seen("POST", "/v5/order/create")
    body = json.loads(sent.body)
    assert (body["category"], body["side"], body["orderType"], body["qty"], body["reduceOnly"]) == (
        "linear",
        "Sell",
        "Market",
        "0.01",
        True,
    )
    assert body["orderLinkId"] == created["orderLinkId"]

    [live] = load("bybit_order_realtime.json")["result"]["list"]
    found = await bybit.fetch_order_by_client_id(BTC, live["orderLinkId"])
    assert (found.client_order_id, found.exchange_order_id, found.status) == (
        live["orderLinkId"],
        live["orderId"],
        "open",
    )
    assert (found.filled_qty, found.avg_price, found.requested_qty) == (D(live["cumExecQty"]), None, D(live["qty"]))

    [done] = load("bybit_order_history.json")["result"]["list"]
    found = await bybit.fetch_order_by_client_id(BTC, done["orderLinkId"])
    assert (found.client_order_id, found.exchange_order_id, found.status) == (
        done["orderLinkId"],
        done["orderId"],
        "canceled",
    )
    assert (found.filled_qty, found.requested_qty) == (D(done["cumExecQty"]), D(done["qty"]))
    history = replay.seen("GET", "/v5/order/history")
    assert [r.query["orderLinkId"] for r in history] == [[created["orderLinkId"]], [done["orderLinkId"]]]


async def test_reduce_only_rejection_is_not_retryable_and_keeps_its_code(replay, adapter):
    serve_markets(replay)
    replay.answer("POST", "/v5/order/create", corpus_bytes("bybit_error_reduce_only_110017.json"))
    bybit = adapter("bybit")
    with pytest.raises(NonRetryableError) as caught:
        await bybit.create_close_order(BTC, "long", D("0.35"), "apm-conformance-1")
    assert caught.value.code == "110017"
    assert replay.seen("GET", "/v5/order/realtime") == []  # a refused order is not looked up
