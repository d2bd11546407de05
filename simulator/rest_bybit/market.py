"""Bybit v5 public market data: server time, instruments, tickers, order book.

``GET /v5/market/time``, ``/v5/market/instruments-info`` (``category=linear``; other
categories and ``status=PreLaunch`` give an empty list), ``/v5/market/tickers``,
``/v5/market/orderbook``. No signature needed, no faults applied.
"""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from simulator.rest_bybit.envelope import EXCHANGE, BybitEnvelope
from simulator.state import Market, dstr


class BybitMarketData(BybitEnvelope):
    """The public market endpoints."""

    async def market_time(self, request: Request) -> Response:
        now = self.state.clock()
        return self.ok({"timeSecond": str(int(now)), "timeNano": str(int(now * 1e9))})

    def _instrument(self, m: Market) -> dict:
        return {
            "symbol": m.symbol_id,
            "contractType": "LinearPerpetual",
            "status": m.status,
            "baseCoin": m.base,
            "quoteCoin": m.quote,
            "launchTime": str(m.launch_time_ms),
            "deliveryTime": "0",
            "deliveryFeeRate": "",
            "priceScale": str(m.price_decimals),
            "leverageFilter": {"minLeverage": "1", "maxLeverage": f"{m.max_leverage}.00", "leverageStep": "0.01"},
            "priceFilter": {
                "minPrice": dstr(m.tick_size),
                "maxPrice": dstr(m.tick_size * Decimal(10**9)),
                "tickSize": dstr(m.tick_size),
            },
            "lotSizeFilter": {
                "maxOrderQty": dstr(m.max_qty),
                "minOrderQty": dstr(m.min_qty),
                "qtyStep": dstr(m.qty_step),
                "postOnlyMaxOrderQty": dstr(m.max_qty),
                "maxMktOrderQty": dstr(m.max_market_qty),
                "minNotionalValue": dstr(m.min_notional),
            },
            "unifiedMarginTrade": True,
            "fundingInterval": 480,
            "settleCoin": m.quote,
            "copyTrading": "both",
            "upperFundingRate": "0.005",
            "lowerFundingRate": "-0.005",
            "isPreListing": m.status == "PreLaunch",
            "preListingInfo": _pre_listing_info(m) if m.status == "PreLaunch" else None,
            "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
            "symbolType": "",
            "displayName": "",
        }

    async def instruments_info(self, request: Request) -> Response:
        q = request.query_params
        category = q.get("category")
        if not category:
            return self.error("10001", "params error: category is required")
        rows = []
        if category == "linear":
            status = q.get("status")
            symbol = q.get("symbol")
            for m in self.state.market_objects(EXCHANGE):
                if symbol and m.symbol_id != symbol.upper():
                    continue
                if status and m.status != status:
                    continue
                if not status and m.status == "PreLaunch":
                    continue  # listed only when asked for
                rows.append(self._instrument(m))
        elif category not in ("spot", "inverse", "option"):
            return self.error("10001", "params error: category invalid")
        return self.ok({"category": category, "list": rows, "nextPageCursor": ""})

    def _ticker(self, m: Market) -> dict:
        st = self.state
        q = st.quote(EXCHANGE, m.symbol_id)
        stats = st.market_stats(EXCHANGE, m.symbol_id)
        change = (q.last - stats["open"]) / stats["open"] if stats["open"] else Decimal(0)
        oi = m.qty_step * 100000
        return {
            "symbol": m.symbol_id,
            "lastPrice": m.fmt_price(q.last),
            "indexPrice": m.fmt_price(q.last),
            "markPrice": m.fmt_price(q.last),
            "prevPrice24h": m.fmt_price(stats["open"]),
            "price24hPcnt": format(change.quantize(Decimal("0.000001")), "f"),
            "highPrice24h": m.fmt_price(stats["high"]),
            "lowPrice24h": m.fmt_price(stats["low"]),
            "prevPrice1h": m.fmt_price(stats["open"]),
            "openInterest": dstr(oi),
            "openInterestValue": m.fmt_price(oi * q.last),
            "turnover24h": dstr(stats["turnover"]),
            "volume24h": dstr(stats["volume"]),
            "fundingRate": "0.0001",
            "nextFundingTime": str(_next_funding_ms(st.now_ms())),
            "predictedDeliveryPrice": "",
            "basisRate": "",
            "deliveryFeeRate": "",
            "deliveryTime": "0",
            "ask1Size": dstr(m.qty_step * 1000),
            "bid1Price": m.fmt_price(q.bid),
            "ask1Price": m.fmt_price(q.ask),
            "bid1Size": dstr(m.qty_step * 1000),
            "basis": "",
            "preOpenPrice": "",
            "preQty": "",
            "curPreListingPhase": "",
        }

    async def tickers(self, request: Request) -> Response:
        q = request.query_params
        category = q.get("category")
        if not category:
            return self.error("10001", "params error: category is required")
        if category != "linear":
            return self.ok({"category": category, "list": []})
        symbol = q.get("symbol")
        if symbol:
            m = self.state.get_market(EXCHANGE, symbol.upper())
            if m is None:
                return self.error("10001", "params error: Not supported symbols")
            rows = [self._ticker(m)]
        else:
            rows = [self._ticker(m) for m in self.state.market_objects(EXCHANGE) if m.status == "Trading"]
        return self.ok({"category": category, "list": rows})

    async def orderbook(self, request: Request) -> Response:
        q = request.query_params
        symbol = (q.get("symbol") or "").upper()
        m = self.state.get_market(EXCHANGE, symbol)
        if q.get("category") != "linear" or m is None:
            return self.error("10001", "params error: symbol invalid")
        try:
            depth = max(1, min(int(q.get("limit", "25")), 500))
        except ValueError:
            return self.error("10001", "params error: limit invalid")
        quote = self.state.quote(EXCHANGE, symbol)
        size = dstr(m.qty_step * 1000)
        bids = [[m.fmt_price(quote.bid - i * m.tick_size), size]
                for i in range(depth) if quote.bid - i * m.tick_size > 0]
        asks = [[m.fmt_price(quote.ask + i * m.tick_size), size] for i in range(depth)]
        return self.ok(
            {"s": symbol, "b": bids, "a": asks, "ts": quote.ts_ms, "u": self.state.steps,
             "seq": self.state.steps, "cts": quote.ts_ms}
        )


def _pre_listing_info(m: Market) -> dict:
    """A pre-market contract's phases (the docs' pre-market example): continuous trading since launch."""
    start = str(m.launch_time_ms)
    return {
        "curAuctionPhase": "ContinuousTrading",
        "phases": [{"phase": "ContinuousTrading", "startTime": start, "endTime": ""}],
        "auctionFeeInfo": {"auctionFeeRate": "0", "takerFeeRate": "0.001", "makerFeeRate": "0.0004"},
    }


def _next_funding_ms(now_ms: int) -> int:
    period = 8 * 3600 * 1000
    return (now_ms // period + 1) * period
