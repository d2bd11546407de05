"""Conformance (b): the simulator's REST replies have the shape of the exchanges' own.

For every endpoint the product calls (SOURCES.md lists them), a real simulator on
loopback is asked with real signed requests (ccxt's own clients, or signed by hand
where the raw HTTP status matters), and its reply must carry the same keys at every
level, the same JSON value types and the same envelope as the corpus payload
(:func:`tests.conformance.shapes.shape_differences`). So the simulator cannot drift
from the exchanges unnoticed: a test that passes against the simulator then says
something about the exchange.

Allowances are few and each names its reason. Every allowance must still be needed
(a difference it covers must exist), so a fixed simulator or a newer example retires
it visibly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from tests.conformance.replay import corpus_bytes
from tests.conformance.shapes import shape_differences
from tests.test_simulator_admin import binance_signed, bybit_signed_post
from tests.test_simulator_rest import aio, clients, loaded, sim  # noqa: F401 (fixtures)

ROWS = "$.result.list[]"
DISPLAY_NAME = {f"{ROWS}.displayName": "in the field table (the name of USDC contracts), not in the USDT examples"}
NEWER_BYBIT_TABLE = "in the page's field table and example of later revisions, not in this (older) example; never read"


@dataclass(frozen=True)
class Case:
    corpus: str
    exchange: str
    method: str  # ccxt's implicit method for the endpoint
    params: dict
    allowed: dict[str, str] = field(default_factory=dict)  # path -> why the difference is accepted
    keyed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.corpus


BTC_LINEAR = {"category": "linear", "symbol": "BTCUSDT"}

CASES = [
    Case(
        "bybit_instruments_info_linear.json",
        "bybit",
        "publicGetV5MarketInstrumentsInfo",
        BTC_LINEAR,
        DISPLAY_NAME,
    ),
    Case(
        "bybit_instruments_info_prelaunch.json",
        "bybit",
        "publicGetV5MarketInstrumentsInfo",
        {"category": "linear", "status": "PreLaunch"},
    ),
    Case(
        "bybit_market_tickers_inverse.json",
        "bybit",
        "publicGetV5MarketTickers",
        BTC_LINEAR,
        {f"{ROWS}.{k}": NEWER_BYBIT_TABLE for k in ("basis", "preOpenPrice", "preQty", "curPreListingPhase")},
    ),
    Case(
        "bybit_position_list.json",
        "bybit",
        "privateGetV5PositionList",
        BTC_LINEAR,
        {
            f"{ROWS}.mmrSysUpdateTime": "the example's spelling; the field table says mmrSysUpdatedTime",
            f"{ROWS}.mmrSysUpdatedTime": "the field table's spelling (see mmrSysUpdateTime)",
            f"{ROWS}.openTime": "in no revision that could be read; configurable, see SOURCES.md",
        },
    ),
    Case(
        "bybit_execution_list.json",
        "bybit",
        "privateGetV5ExecutionList",
        BTC_LINEAR,
        {f"{ROWS}.createType": "in the field table ('Spot, Option do not have this key'), not in the example"},
    ),
    Case(
        "bybit_order_create.json",
        "bybit",
        "privatePostV5OrderCreate",
        {
            **BTC_LINEAR,
            "side": "Sell",
            "orderType": "Market",
            "qty": "0.1",
            "reduceOnly": True,
            "orderLinkId": "conformance-create",
        },
    ),
    Case(
        "bybit_order_realtime.json",
        "bybit",
        "privateGetV5OrderRealtime",
        {**BTC_LINEAR, "orderLinkId": "conformance-order"},
        {f"{ROWS}.{k}": NEWER_BYBIT_TABLE for k in ("basePrice", "createType", "marketUnit", "ocoTriggerBy")}
        | {f"{ROWS}.cumFeeDetail": "a per-coin fee map the order-history example of the same API lacks; never read"},
    ),
    Case(
        "bybit_order_history.json",
        "bybit",
        "privateGetV5OrderHistory",
        {**BTC_LINEAR, "orderLinkId": "conformance-order"},
        {f"{ROWS}.{k}": NEWER_BYBIT_TABLE for k in ("basePrice", "createType", "marketUnit", "ocoTriggerBy")},
    ),
    Case(
        "binance_exchange_info.json",
        "binanceusdm",
        "fapiPublicGetExchangeInfo",
        {},
        {
            "$.symbols[].OrderType": "the documented example misspells orderTypes (see orderTypes)",
            "$.symbols[].orderTypes": "what real replies carry and ccxt reads: ccxt refuses an order type"
            " not listed there (test_rest_adapter_binance.py)",
        },
        {"$.symbols[].filters": "filterType"},
    ),
    Case("binance_book_ticker.json", "binanceusdm", "fapiPublicGetTickerBookTicker", {"symbol": "BTCUSDT"}),
    Case("binance_ticker_price.json", "binanceusdm", "fapiPublicGetTickerPrice", {"symbol": "BTCUSDT"}),
    Case("binance_ticker_price_capture.json", "binanceusdm", "fapiPublicGetTickerPrice", {"symbol": "BTCUSDT"}),
    Case("binance_position_side_dual.json", "binanceusdm", "fapiPrivateGetPositionSideDual", {}),
    Case("binance_position_risk_v3.json", "binanceusdm", "fapiPrivateV3GetPositionRisk", {"symbol": "BTCUSDT"}),
    Case("binance_user_trades.json", "binanceusdm", "fapiPrivateGetUserTrades", {"symbol": "BTCUSDT"}),
    Case(
        "binance_order_new.json",
        "binanceusdm",
        "fapiPrivatePostOrder",
        {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "MARKET",
            "quantity": "0.1",
            "reduceOnly": "true",
            "newClientOrderId": "conformance-create",
            "newOrderRespType": "RESULT",
        },
    ),
    Case(
        "binance_order_query.json",
        "binanceusdm",
        "fapiPrivateGetOrder",
        {"symbol": "BTCUSDT", "origClientOrderId": "conformance-order"},
        {
            "$.activatePrice": "'only return with TRAILING_STOP_MARKET order' (the page); never read",
            "$.priceRate": "'only return with TRAILING_STOP_MARKET order' (the page); never read",
        },
    ),
]


def covers(path: str, difference: str) -> bool:
    return difference.startswith((path + ":", path + ".", path + "["))


def check_shape(case: Case, reply) -> None:
    real = json.loads(corpus_bytes(case.corpus))
    assert all(case.allowed.values()), "every allowance names its reason"
    assert shape_differences(real, reply, set(case.allowed), case.keyed) == []
    unallowed = shape_differences(real, reply, set(), case.keyed)
    stale = [p for p in case.allowed if not any(covers(p, d) for d in unallowed)]
    assert not stale, f"allowances no longer needed: {stale}"


@pytest.fixture
async def trading(sim, loaded):
    """Both simulated accounts long 0.5 BTCUSDT, each with one filled reduce-only order."""
    for name in ("bybit", "binanceusdm"):
        sim.state.set_position(name, "BTCUSDT", "long", "0.5", "60000", datetime.now(UTC) - timedelta(days=1))
    by, bn = loaded["bybit"], loaded["binanceusdm"]
    await aio(
        by.privatePostV5OrderCreate,
        {
            **BTC_LINEAR,
            "side": "Sell",
            "orderType": "Market",
            "qty": "0.1",
            "reduceOnly": True,
            "orderLinkId": "conformance-order",
        },
    )
    await aio(
        bn.fapiPrivatePostOrder,
        {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "type": "MARKET",
            "quantity": "0.1",
            "reduceOnly": "true",
            "newClientOrderId": "conformance-order",
        },
    )
    return loaded


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_reply_has_the_shape_of_the_real_payload(case, trading):
    reply = await aio(getattr(trading[case.exchange], case.method), dict(case.params))
    check_shape(case, reply)


async def test_bybit_pre_market_instrument_has_the_real_shape(sim, loaded):
    sim.state.get_market("bybit", "DOGEUSDT").status = "PreLaunch"  # a pre-market listing
    case = Case("bybit_instruments_info_prelaunch.json", "bybit", "", {}, DISPLAY_NAME)
    reply = await aio(loaded["bybit"].publicGetV5MarketInstrumentsInfo, {"category": "linear", "status": "PreLaunch"})
    [row] = reply["result"]["list"]
    assert (row["symbol"], row["status"], row["isPreListing"]) == ("DOGEUSDT", "PreLaunch", True)
    check_shape(case, reply)


async def test_bybit_reduce_only_rejection_has_the_real_envelope(sim):
    body = {**BTC_LINEAR, "symbol": "ETHUSDT", "side": "Sell", "orderType": "Market", "qty": "0.1", "reduceOnly": True}
    status, reply = await bybit_signed_post(sim.base_url, "/v5/order/create", body)
    check_shape(Case("bybit_error_reduce_only_110017.json", "bybit", "", {}), reply)
    assert (status, reply["retCode"]) == (200, 110017)  # a business error still answers HTTP 200


@pytest.mark.parametrize("corpus", ["binance_error_reduce_only_4118.json", "binance_error_timestamp_1021.json"])
async def test_binance_rejection_has_the_real_envelope_and_status(sim, corpus):
    params = {"symbol": "ETHUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.1", "reduceOnly": "true"}
    status, reply = await binance_signed("POST", sim.base_url, "/fapi/v1/order", params)
    check_shape(Case(corpus, "binanceusdm", "", {}), reply)
    assert status == 400 and reply["code"] < 0  # as in the capture of binance_error_timestamp_1021.json
