"""The Binance USD-M futures dialect of the ccxt adapter.

Endpoints (ccxt implicit method → Binance USD-M REST):

=====================================  ================================================
``fapiPrivateV3GetPositionRisk``       positions (``GET /fapi/v3/positionRisk``)
``fapiPrivateGetPositionSideDual``     the account's position mode (weight 30)
``fapiPrivateGetUserTrades``           fills, up to 1,000 rows and 7 days per request
``fapiPublicGetTickerBookTicker`` +    quote: best bid/ask from the book ticker, last
``fapiPublicGetTickerPrice``           price from the price ticker (asked together)
``create_order`` (POST /fapi/v1/order) ``newClientOrderId``, ``newOrderRespType=RESULT``
``fapiPrivateGetOrder``                order lookup by ``origClientOrderId`` (-2013: none)
=====================================  ================================================

Quirks this module knows:

* A position row's side is the sign of ``positionAmt``; ``positionSide`` BOTH is
  one-way mode, LONG / SHORT hedge mode. The row has no open time at all, and
  ``updateTime`` moves on every change: it only tells that something changed.
* A user-trades window that comes back full (1,000 rows) may have lost rows: it is
  split in halves and asked again.
* Lot limits come from ``exchangeInfo`` filters: ``LOT_SIZE`` (LIMIT orders) and
  ``MARKET_LOT_SIZE`` (MARKET orders); the larger of the two minimums applies.
* A MARKET create reply usually carries the fill (``RESULT``); one that comes back NEW
  is looked up afterwards. ``avgPrice`` may be "0" on a filled order: the average is
  then ``cumQuote / executedQty``.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from exchanges.dialect import Dialect
from exchanges.port import ExchangePosition, Fill, LotLimits, OrderResult, Quote
from exchanges.raw import dec, ms_to_dt, price

__all__ = ["BinanceDialect"]

_ORDER_STATUS = {
    "NEW": "open",
    "PARTIALLY_FILLED": "open",
    "FILLED": "closed",
    "CANCELED": "canceled",
    "EXPIRED": "canceled",
    "EXPIRED_IN_MATCH": "canceled",
    "REJECTED": "rejected",
}

_USER_TRADES_LIMIT = 1000
_MAX_WINDOW_SPLITS = 20


class BinanceDialect(Dialect):
    """Binance USD-M: ``positionRisk`` v3, ``userTrades``, ``newClientOrderId``."""

    name = "binanceusdm"

    async def position_rows(self, symbol_id: str | None) -> list[dict]:
        params: dict[str, Any] = {} if symbol_id is None else {"symbol": symbol_id}
        return await self._request(self._client.fapiPrivateV3GetPositionRisk, params) or []

    def parse_position(self, row: dict) -> ExchangePosition | None:
        amount = dec(row.get("positionAmt"))
        if amount is None or amount == 0:
            return None
        side = "long" if amount > 0 else "short"
        if str(row.get("positionSide") or "BOTH").upper() != "BOTH":
            self._hedge_row(str(row.get("symbol")), str(row.get("positionSide")).lower())
            return None
        symbol = self._unified_from_id(str(row.get("symbol") or ""))
        if symbol is None:
            self._bad_row(row.get("symbol"), "unknown symbol")
            return None
        entry = price(row.get("entryPrice"))
        if entry is None:
            self._bad_row(row.get("symbol"), f"entry price {row.get('entryPrice')!r} is not a positive number")
            return None
        self._row_read(row.get("symbol"))
        return ExchangePosition(
            exchange=self.name,
            symbol=symbol,
            side=side,
            qty=abs(amount),
            entry_price=entry,
            opened_at=None,  # Binance does not report when a position was opened
            updated_at=ms_to_dt(row.get("updateTime")),
        )

    async def position_mode(self) -> str:
        rows = await self._request(self._client.fapiPrivateV3GetPositionRisk, {})
        sides = {str(r.get("positionSide") or "BOTH").upper() for r in rows or [] if dec(r.get("positionAmt"))}
        if sides:
            return "one_way" if sides == {"BOTH"} else "hedge"
        reply = await self._request(self._client.fapiPrivateGetPositionSideDual)
        dual = (reply or {}).get("dualSidePosition")
        return "hedge" if dual is True or str(dual).lower() == "true" else "one_way"

    async def fills(self, symbol_id: str, start_ms: int, end_ms: int, depth: int = 0) -> list[Fill]:
        rows = await self._request(
            self._client.fapiPrivateGetUserTrades,
            {"symbol": symbol_id, "startTime": start_ms, "endTime": end_ms, "limit": _USER_TRADES_LIMIT},
        )
        rows = rows or []
        if len(rows) >= _USER_TRADES_LIMIT and end_ms > start_ms and depth < _MAX_WINDOW_SPLITS:
            mid = (start_ms + end_ms) // 2
            return await self.fills(symbol_id, start_ms, mid, depth + 1) + await self.fills(
                symbol_id, mid + 1, end_ms, depth + 1
            )
        return [f for f in map(self.parse_fill, rows) if f is not None]

    def parse_fill(self, row: dict) -> Fill | None:
        return self._parse_fill(row, "id", "time", "qty", "price", None)

    async def quote(self, symbol: str, symbol_id: str) -> Quote:
        book, last = await self._request(self._book_and_last, symbol_id)
        if isinstance(book, list):
            book = next((r for r in book if r.get("symbol") == symbol_id), {})
        if isinstance(last, list):
            last = next((r for r in last if r.get("symbol") == symbol_id), {})
        return Quote(
            symbol=symbol,
            bid=price(book.get("bidPrice")),
            ask=price(book.get("askPrice")),
            last=price(last.get("price")),
            timestamp=ms_to_dt(book.get("time")) or ms_to_dt(last.get("time")),
        )

    async def _book_and_last(self, symbol_id: str) -> tuple[Any, Any]:
        # asyncio side: both requests concurrently, one trio<->asyncio crossing
        book, last = await asyncio.gather(
            self._client.fapiPublicGetTickerBookTicker({"symbol": symbol_id}),
            self._client.fapiPublicGetTickerPrice({"symbol": symbol_id}),
        )
        return book or {}, last or {}

    def lot_limits(self, market: dict) -> LotLimits:
        """``exchangeInfo`` filters ``LOT_SIZE`` and ``MARKET_LOT_SIZE``."""
        info = market.get("info") or {}
        filters = {f.get("filterType"): f for f in info.get("filters") or [] if isinstance(f, dict)}
        lot, market_lot = filters.get("LOT_SIZE") or {}, filters.get("MARKET_LOT_SIZE") or {}
        step = dec(lot.get("stepSize"))
        mins = [v for v in (dec(lot.get("minQty")), dec(market_lot.get("minQty"))) if v is not None and v > 0]
        return LotLimits(
            step=step if step and step > 0 else None,
            min_qty=max(mins) if mins else None,
            max_market_qty=dec(market_lot.get("maxQty")) or dec(lot.get("maxQty")),
            max_limit_qty=dec(lot.get("maxQty")),
        )

    def tag_order(self, client_order_id: str) -> dict[str, Any]:
        return {"newClientOrderId": client_order_id}

    def created_order(self, order: dict, client_order_id: str, requested: Decimal) -> OrderResult:
        return self.parse_order((order or {}).get("info") or {}, client_order_id, requested)

    async def order_by_client_id(self, symbol_id: str, client_order_id: str) -> OrderResult | None:
        row = await self._request(
            self._client.fapiPrivateGetOrder, {"symbol": symbol_id, "origClientOrderId": client_order_id}
        )
        if not row:
            return None
        return self.parse_order(row, client_order_id, None)

    def parse_order(self, row: dict, client_order_id: str, requested: Decimal | None) -> OrderResult:
        """One order (``status``, ``executedQty``, ``avgPrice`` / ``cumQuote``, ``origQty``)."""
        filled = dec(row.get("executedQty")) or Decimal(0)
        avg = price(row.get("avgPrice")) if filled > 0 else None
        if avg is None and filled > 0:
            cum_quote = dec(row.get("cumQuote"))
            if cum_quote:
                avg = cum_quote / filled
        order_id = row.get("orderId")
        return OrderResult(
            client_order_id=str(row.get("clientOrderId") or client_order_id),
            exchange_order_id=str(order_id) if order_id not in (None, "") else None,
            status=_ORDER_STATUS.get(str(row.get("status") or "").upper(), "open"),
            filled_qty=filled,
            avg_price=avg,
            requested_qty=dec(row.get("origQty")) or requested,
        )
