"""Binance USD-M public market data: ping, time, exchange info, tickers, depth.

``GET /fapi/v1/ping``, ``/fapi/v1/time``, ``/fapi/v1/exchangeInfo`` (with one quarterly
contract, as the real list has, so clients must filter swaps),
``/fapi/v1/ticker/bookTicker``, ``/fapi/v1/ticker/24hr``, ``/fapi/v1/ticker/price`` (and
v2), ``/fapi/v1/premiumIndex``, ``/fapi/v1/depth``. No signature needed, no faults applied.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import json_response
from simulator.rest_binance.envelope import EXCHANGE, BinanceEnvelope, mandatory_parameter
from simulator.state import Market, dstr, dt_ms


class BinanceMarketData(BinanceEnvelope):
    """The public market endpoints."""

    async def ping(self, request: Request) -> Response:
        return json_response({})

    async def server_time(self, request: Request) -> Response:
        return json_response({"serverTime": self.state.now_ms()})

    def _symbol_row(self, m: Market) -> dict:
        return {
            "symbol": m.symbol_id,
            "pair": m.symbol_id,
            "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000,
            "onboardDate": m.launch_time_ms,
            "status": "TRADING" if m.status == "Trading" else "PENDING_TRADING",
            "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000",
            "baseAsset": m.base,
            "quoteAsset": m.quote,
            "marginAsset": m.quote,
            "pricePrecision": m.price_decimals,
            "quantityPrecision": m.qty_decimals,
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "underlyingType": "COIN",
            "underlyingSubType": [],
            "settlePlan": 0,
            "triggerProtect": "0.0500",
            "liquidationFee": "0.012500",
            "marketTakeBound": "0.05",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": dstr(m.tick_size),
                 "maxPrice": dstr(m.tick_size * Decimal(10**9)), "tickSize": dstr(m.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": dstr(m.min_qty), "maxQty": dstr(m.max_qty),
                 "stepSize": dstr(m.qty_step)},
                {"filterType": "MARKET_LOT_SIZE", "minQty": dstr(m.min_qty), "maxQty": dstr(m.max_market_qty),
                 "stepSize": dstr(m.qty_step)},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                {"filterType": "MIN_NOTIONAL", "notional": dstr(m.min_notional)},
                {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
                 "multiplierDecimal": "4"},
            ],
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                           "TRAILING_STOP_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        }

    async def exchange_info(self, request: Request) -> Response:
        rows = [self._symbol_row(m) for m in self.state.market_objects(EXCHANGE)]
        btc = self.state.get_market(EXCHANGE, "BTCUSDT")
        if btc is not None:  # the real list carries quarterlies too; clients must filter swaps
            delivery = _quarter_delivery(self.state.now())
            q = self._symbol_row(btc)
            q.update(
                symbol=f"BTCUSDT_{delivery:%y%m%d}",
                contractType="CURRENT_QUARTER",
                deliveryDate=dt_ms(delivery),
            )
            rows.append(q)
        return json_response(
            {
                "timezone": "UTC",
                "serverTime": self.state.now_ms(),
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
                ],
                "exchangeFilters": [],
                "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
                "symbols": rows,
            }
        )

    def _one_or_all(self, request: Request, fn) -> Response:
        symbol = request.query_params.get("symbol")
        if symbol:
            m = self.state.get_market(EXCHANGE, symbol.upper())
            if m is None:
                return self.error("-1121")
            return json_response(fn(m))
        return json_response([fn(m) for m in self.state.market_objects(EXCHANGE) if m.status == "Trading"])

    def _book_row(self, m: Market) -> dict:
        q = self.state.quote(EXCHANGE, m.symbol_id)
        size = m.fmt_qty(m.qty_step * 1000)
        return {
            "symbol": m.symbol_id,
            "bidPrice": m.fmt_price(q.bid),
            "bidQty": size,
            "askPrice": m.fmt_price(q.ask),
            "askQty": size,
            "time": q.ts_ms,
        }

    def _24hr_row(self, m: Market) -> dict:
        st = self.state
        q = st.quote(EXCHANGE, m.symbol_id)
        s = st.market_stats(EXCHANGE, m.symbol_id)
        change = q.last - s["open"]
        pct = (change / s["open"] * 100) if s["open"] else Decimal(0)
        vwap = (s["turnover"] / s["volume"]) if s["volume"] else q.last
        now = st.now_ms()
        return {
            "symbol": m.symbol_id,
            "priceChange": m.fmt_price(change),
            "priceChangePercent": format(pct.quantize(Decimal("0.001")), "f"),
            "weightedAvgPrice": m.fmt_price(vwap),
            "lastPrice": m.fmt_price(q.last),
            "lastQty": m.fmt_qty(m.qty_step),
            "openPrice": m.fmt_price(s["open"]),
            "highPrice": m.fmt_price(s["high"]),
            "lowPrice": m.fmt_price(s["low"]),
            "volume": m.fmt_qty(s["volume"]),
            "quoteVolume": dstr(s["turnover"]),
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 1,
            "lastId": 1 + s["trades"],
            "count": s["trades"],
        }

    def _price_row(self, m: Market) -> dict:
        q = self.state.quote(EXCHANGE, m.symbol_id)
        return {"symbol": m.symbol_id, "price": m.fmt_price(q.last), "time": q.ts_ms}

    def _premium_row(self, m: Market) -> dict:
        q = self.state.quote(EXCHANGE, m.symbol_id)
        now = self.state.now_ms()
        period = 8 * 3600 * 1000
        return {
            "symbol": m.symbol_id,
            "markPrice": m.fmt_price(q.last),
            "indexPrice": m.fmt_price(q.last),
            "estimatedSettlePrice": m.fmt_price(q.last),
            "lastFundingRate": "0.00010000",
            "interestRate": "0.00010000",
            "nextFundingTime": (now // period + 1) * period,
            "time": now,
        }

    async def book_ticker(self, request: Request) -> Response:
        return self._one_or_all(request, self._book_row)

    async def ticker_24hr(self, request: Request) -> Response:
        return self._one_or_all(request, self._24hr_row)

    async def ticker_price(self, request: Request) -> Response:
        return self._one_or_all(request, self._price_row)

    async def premium_index(self, request: Request) -> Response:
        return self._one_or_all(request, self._premium_row)

    async def depth(self, request: Request) -> Response:
        symbol = (request.query_params.get("symbol") or "").upper()
        m = self.state.get_market(EXCHANGE, symbol)
        if m is None:
            return self.error("-1121")
        try:
            n = max(1, min(int(request.query_params.get("limit", "20")), 1000))
        except ValueError:
            return self.error("-1102", mandatory_parameter("limit"))
        q = self.state.quote(EXCHANGE, symbol)
        size = m.fmt_qty(m.qty_step * 1000)
        now = self.state.now_ms()
        return json_response(
            {
                "lastUpdateId": self.state.steps,
                "E": now,
                "T": q.ts_ms,
                "bids": [[m.fmt_price(q.bid - i * m.tick_size), size] for i in range(n) if q.bid - i * m.tick_size > 0],
                "asks": [[m.fmt_price(q.ask + i * m.tick_size), size] for i in range(n)],
            }
        )


def _quarter_delivery(now: datetime) -> datetime:
    """The last Friday of the current quarter's last month, 08:00 UTC (next one if past)."""
    year, month = now.year, ((now.month - 1) // 3 + 1) * 3
    for _ in range(2):
        last_day = calendar.monthrange(year, month)[1]
        d = datetime(year, month, last_day, 8, tzinfo=timezone.utc)
        while d.weekday() != 4:
            d -= timedelta(days=1)
        if d > now:
            return d
        month += 3
        if month > 12:
            month, year = month - 12, year + 1
    return d
