"""Conformance (a), Binance USD-M: the adapter reads every REST reply it relies on, through real ccxt.

A :class:`~exchanges.ccxt_adapter.CcxtExchange` built as the service builds it talks
to a loopback replay server (:mod:`tests.conformance.replay`) that answers each
endpoint with Binance's own response example (or a reply captured from
``fapi.binance.com``), unchanged (sources: SOURCES.md here). The test checks the
port's values field by field against the payload, and what was asked.

One documented payload cannot go the whole way: the exchangeInfo example spells the
order-type list ``"OrderType"``, while ccxt reads ``orderTypes`` (as real replies
spell it) and refuses any order type the market does not list. With that example
loaded, ccxt stops a close before sending it (checked below); so the documented
*create* reply and its rejection are read by ccxt's own parser and error mapping,
without the network.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from exchanges.classify import classify
from exchanges.errors import NonRetryableError, RetryableError
from exchanges.port import LotLimits
from tests.conformance.replay import adapter, corpus_bytes, replay  # noqa: F401 (fixtures)

BLZ = "BLZ/USDT:USDT"  # the one market of the documented exchangeInfo


def load(name: str):
    return json.loads(corpus_bytes(name))


def ms(value) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def filters(row: dict) -> dict:
    return {f["filterType"]: f for f in row["filters"]}


async def loaded(replay, adapter):
    replay.answer("GET", "/fapi/v1/exchangeInfo", corpus_bytes("binance_exchange_info.json"))
    binance = adapter("binanceusdm")
    await binance.load_markets()
    return binance


async def test_exchange_info_gives_the_perpetual_its_lot_limits_and_tick(replay, adapter):
    binance = await loaded(replay, adapter)
    assert binance.symbols == {BLZ}
    [row] = load("binance_exchange_info.json")["symbols"]
    lot, market_lot = filters(row)["LOT_SIZE"], filters(row)["MARKET_LOT_SIZE"]
    assert await binance.close_limits(BLZ) == LotLimits(
        step=D(lot["stepSize"]),
        min_qty=max(D(lot["minQty"]), D(market_lot["minQty"])),
        max_market_qty=D(market_lot["maxQty"]),
        max_limit_qty=D(lot["maxQty"]),
    )
    assert binance.price_tick(BLZ) == D(filters(row)["PRICE_FILTER"]["tickSize"])


async def test_position_rows_give_side_size_entry_and_change_time(replay, adapter):
    binance = await loaded(replay, adapter)
    replay.answer("GET", "/fapi/v3/positionRisk", corpus_bytes("binance_position_risk_v3.json"))
    [row] = load("binance_position_risk_v3.json")
    [position] = await binance.fetch_positions()
    assert (position.exchange, position.symbol, position.side) == ("binanceusdm", "ADA/USDT:USDT", "long")
    assert (position.qty, position.entry_price) == (D(row["positionAmt"]), D(row["entryPrice"]))
    assert position.updated_at == ms(row["updateTime"]) and position.opened_at is None
    assert await binance.position_mode() == "one_way"  # positionSide BOTH on an open position
    assert replay.seen("GET", "/fapi/v1/positionSide/dual") == []  # an open row already told


async def test_flat_account_asks_the_position_mode(replay, adapter):
    binance = await loaded(replay, adapter)
    replay.answer("GET", "/fapi/v3/positionRisk", b"[]")  # the documented array, with no row: flat
    replay.answer("GET", "/fapi/v1/positionSide/dual", corpus_bytes("binance_position_side_dual.json"))
    assert load("binance_position_side_dual.json")["dualSidePosition"] is True
    assert await binance.position_mode() == "hedge"
    [asked] = replay.seen("GET", "/fapi/v1/positionSide/dual")
    assert "signature" in asked.query and "timestamp" in asked.query


async def test_user_trades_are_fills(replay, adapter):
    binance = await loaded(replay, adapter)
    replay.answer("GET", "/fapi/v1/userTrades", corpus_bytes("binance_user_trades.json"))
    [row] = load("binance_user_trades.json")
    until = datetime(2019, 9, 27, tzinfo=UTC)
    [fill] = await binance.fetch_fills("BTC/USDT:USDT", until - timedelta(days=1), until)
    assert (fill.fill_id, fill.side, fill.qty, fill.price) == (str(row["id"]), "sell", D(row["qty"]), D(row["price"]))
    assert fill.time == ms(row["time"]) and fill.client_order_id is None
    [asked] = replay.seen("GET", "/fapi/v1/userTrades")
    assert (asked.query["symbol"], asked.query["limit"]) == (["BTCUSDT"], ["1000"])


@pytest.mark.parametrize("price_file", ["binance_ticker_price.json", "binance_ticker_price_capture.json"])
async def test_quote_takes_bid_ask_from_the_book_ticker_and_last_from_the_price(replay, adapter, price_file):
    binance = adapter("binanceusdm")
    replay.answer("GET", "/fapi/v1/ticker/bookTicker", corpus_bytes("binance_book_ticker.json"))
    replay.answer("GET", "/fapi/v1/ticker/price", corpus_bytes(price_file))
    book, last = load("binance_book_ticker.json"), load(price_file)
    quote = await binance.dialect.quote("BTC/USDT:USDT", book["symbol"])
    assert (quote.bid, quote.ask, quote.last) == (D(book["bidPrice"]), D(book["askPrice"]), D(last["price"]))
    assert quote.timestamp == ms(book["time"])
    for path in ("/fapi/v1/ticker/bookTicker", "/fapi/v1/ticker/price"):
        [asked] = replay.seen("GET", path)
        assert asked.query == {"symbol": ["BTCUSDT"]}


async def test_order_lookup_by_client_id(replay, adapter):
    binance = await loaded(replay, adapter)
    replay.answer("GET", "/fapi/v1/order", corpus_bytes("binance_order_query.json"))
    row = load("binance_order_query.json")
    found = await binance.fetch_order_by_client_id(BLZ, row["clientOrderId"])
    assert (found.client_order_id, found.exchange_order_id, found.status) == (
        row["clientOrderId"],
        str(row["orderId"]),
        "open",
    )
    assert (found.filled_qty, found.avg_price, found.requested_qty) == (D(row["executedQty"]), None, D(row["origQty"]))
    [asked] = replay.seen("GET", "/fapi/v1/order")
    assert (asked.query["symbol"], asked.query["origClientOrderId"]) == (["BLZUSDT"], [row["clientOrderId"]])


async def test_timestamp_outside_the_receive_window_is_retryable(replay, adapter):
    binance = await loaded(replay, adapter)
    replay.answer("GET", "/fapi/v1/order", corpus_bytes("binance_error_timestamp_1021.json"), status=400)
    with pytest.raises(RetryableError) as caught:
        await binance.fetch_order_by_client_id(BLZ, "apm-conformance-1")
    assert caught.value.code == "-1021"


async def test_documented_exchange_info_lists_no_order_types_that_ccxt_reads(replay, adapter):
    binance = await loaded(replay, adapter)
    [row] = load("binance_exchange_info.json")["symbols"]
    assert "MARKET" in row["OrderType"] and "orderTypes" not in row
    with pytest.raises(NonRetryableError):
        await binance.create_close_order(BLZ, "long", D("10"), "apm-conformance-1")
    assert replay.seen("POST", "/fapi/v1/order") == []  # refused before anything was sent


async def test_order_create_reply_read_by_ccxt_and_the_dialect(replay, adapter):
    binance = await loaded(replay, adapter)
    client = binance._client
    reply = load("binance_order_new.json")
    order = client.parse_order(reply, client.market(BLZ))
    result = binance.dialect.created_order(order, "apm-conformance-1", D("10"))
    assert (result.client_order_id, result.exchange_order_id, result.status) == (
        reply["clientOrderId"],
        str(reply["orderId"]),
        "open",  # NEW: the adapter looks the order up afterwards
    )
    assert (result.filled_qty, result.avg_price, result.requested_qty) == (
        D(reply["executedQty"]),
        None,
        D(reply["origQty"]),
    )


async def test_reduce_only_refusal_on_create_is_not_retryable(replay, adapter):
    binance = await loaded(replay, adapter)
    client = binance._client
    body = corpus_bytes("binance_error_reduce_only_4118.json").decode()
    with pytest.raises(Exception) as raised:  # ccxt's own mapping of an HTTP 400 reply
        client.handle_errors(
            400, "Bad Request", replay.base_url + "/fapi/v1/order", "POST", {}, body, json.loads(body), {}, ""
        )
    err = classify(raised.value, during_order_create=True, exchange="binanceusdm")
    assert isinstance(err, NonRetryableError) and err.code == "-4118"
