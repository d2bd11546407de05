"""The Bybit v5 dialect of the ccxt adapter (``category=linear``, USDT-settled).

Endpoints (ccxt implicit method → Bybit v5 REST):

=====================================  ================================================
``privateGetV5PositionList``           positions, cursor pages of up to 200 rows
``privateGetV5ExecutionList``          fills, cursor pages of 100, 7 days per request
``publicGetV5MarketTickers``           quote: ``bid1Price`` / ``ask1Price`` / ``lastPrice``
``create_order`` (POST order/create)   our client order id travels as ``orderLinkId``
``privateGetV5OrderRealtime``, then    order lookup by ``orderLinkId``: open orders first,
``privateGetV5OrderHistory``           then the history
=====================================  ================================================

Quirks this module knows:

* A position row's ``createdTime`` is when a position was *first ever* created on the
  symbol (v5 docs, "Get Position Info"), not when this one was opened: it is never
  used. ``openTime``, where present and non-zero, is the open time; ``updatedTime``
  tells that something changed.
* ``positionIdx`` 0 is one-way mode; 1 and 2 are the two legs of hedge mode.
* The execution list answers newest first and includes funding rows (``execType``
  Funding) that move no position: those are left out.
* The create reply carries no fill: the order is always looked up afterwards.
* A rate limit tells its end in ``X-Bapi-Limit-Reset-Timestamp`` (epoch ms).
* Bybit has no call for the account's position mode: a flat account is ``"unknown"``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from exchanges.dialect import Dialect
from exchanges.errors import NonRetryableError
from exchanges.port import ExchangePosition, Fill, LotLimits, OrderResult, Quote
from exchanges.raw import dec, header, ms_to_dt, price

__all__ = ["BybitDialect"]

_ORDER_STATUS = {
    "New": "open",
    "PartiallyFilled": "open",
    "Untriggered": "open",
    "Triggered": "open",
    "Created": "open",
    "Filled": "closed",
    "Cancelled": "canceled",
    "PartiallyFilledCanceled": "canceled",
    "Deactivated": "canceled",
    "Rejected": "rejected",
}

_MAX_POSITION_PAGES = 50
_MAX_FILL_PAGES = 200


class BybitDialect(Dialect):
    """Bybit v5 linear: cursor-paged lists, ``orderLinkId``, ``positionIdx``."""

    name = "bybit"

    async def position_rows(self, symbol_id: str | None) -> list[dict]:
        base: dict[str, Any] = {"category": "linear", "limit": 200}
        if symbol_id is not None:
            base["symbol"] = symbol_id
        else:
            base["settleCoin"] = "USDT"
        rows: list[dict] = []
        cursor: str | None = None
        seen_cursors: set[str] = set()
        for _ in range(_MAX_POSITION_PAGES):
            params = dict(base)
            if cursor:
                params["cursor"] = cursor
            response = await self._request(self._client.privateGetV5PositionList, params)
            result = (response or {}).get("result") or {}
            page = result.get("list") or []
            rows.extend(page)
            cursor = result.get("nextPageCursor") or None
            if not cursor or not page or cursor in seen_cursors:
                break
            seen_cursors.add(cursor)
        return rows

    def parse_position(self, row: dict) -> ExchangePosition | None:
        qty = dec(row.get("size"))
        if qty is None or qty == 0:
            return None
        side_raw = str(row.get("side") or "")
        if side_raw == "Buy":
            side = "long"
        elif side_raw == "Sell":
            side = "short"
        else:
            return None
        if str(row.get("positionIdx") or "0") in ("1", "2"):
            self._hedge_row(str(row.get("symbol")), side)
            return None
        symbol = self._unified_from_id(str(row.get("symbol") or ""))
        if symbol is None:
            self._bad_row(row.get("symbol"), "unknown symbol")
            return None
        entry = price(row.get("avgPrice")) or price(row.get("entryPrice"))
        if entry is None:
            self._bad_row(row.get("symbol"), f"entry price {row.get('avgPrice')!r} is not a positive number")
            return None
        self._row_read(row.get("symbol"))
        return ExchangePosition(
            exchange=self.name,
            symbol=symbol,
            side=side,
            qty=abs(qty),
            entry_price=entry,
            opened_at=ms_to_dt(row.get("openTime")),  # 0 or absent: unknown (never createdTime)
            updated_at=ms_to_dt(row.get("updatedTime")),
        )

    async def position_mode(self) -> str:
        rows = await self.position_rows(None)
        if not rows:
            return "unknown"
        return "hedge" if any(str(r.get("positionIdx") or "0") in ("1", "2") for r in rows) else "one_way"

    async def fills(self, symbol_id: str, start_ms: int, end_ms: int) -> list[Fill]:
        out: list[Fill | None] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_FILL_PAGES):
            params: dict[str, Any] = {
                "category": "linear",
                "symbol": symbol_id,
                "startTime": start_ms,
                "endTime": end_ms,
                "limit": 100,
            }
            if cursor:
                params["cursor"] = cursor
            response = await self._request(self._client.privateGetV5ExecutionList, params)
            result = (response or {}).get("result") or {}
            page = result.get("list") or []
            for row in page:
                if str(row.get("execType") or "Trade") == "Funding":
                    continue
                out.append(self.parse_fill(row))
            cursor = result.get("nextPageCursor") or None
            if not cursor or not page or cursor in seen:
                break
            seen.add(cursor)
        out.reverse()  # Bybit answers newest first (execTime, then seq)
        return [f for f in out if f is not None]

    def parse_fill(self, row: dict) -> Fill | None:
        return self._parse_fill(row, "execId", "execTime", "execQty", "execPrice", "orderLinkId")

    async def quote(self, symbol: str, symbol_id: str) -> Quote:
        response = await self._request(
            self._client.publicGetV5MarketTickers, {"category": "linear", "symbol": symbol_id}
        )
        rows = ((response or {}).get("result") or {}).get("list") or []
        row = next((r for r in rows if r.get("symbol") == symbol_id), None)
        if row is None:
            raise NonRetryableError(f"bybit: no ticker for {symbol}", exchange=self.name, code="no_ticker")
        return Quote(
            symbol=symbol,
            bid=price(row.get("bid1Price")),
            ask=price(row.get("ask1Price")),
            last=price(row.get("lastPrice")),
            timestamp=ms_to_dt((response or {}).get("time")),
        )

    def lot_limits(self, market: dict) -> LotLimits:
        """``instruments-info`` ``lotSizeFilter``: ``qtyStep``, ``minOrderQty``, ``maxOrderQty``, ``maxMktOrderQty``."""
        lot = (market.get("info") or {}).get("lotSizeFilter") or {}
        return LotLimits(
            step=dec(lot.get("qtyStep")),
            min_qty=dec(lot.get("minOrderQty")),
            max_market_qty=dec(lot.get("maxMktOrderQty")) or dec(lot.get("maxOrderQty")),
            max_limit_qty=dec(lot.get("maxOrderQty")),
        )

    def tag_order(self, client_order_id: str) -> dict[str, Any]:
        return {"clientOrderId": client_order_id}  # ccxt sends it as orderLinkId

    def created_order(self, order: dict, client_order_id: str, requested: Decimal) -> OrderResult:
        info = (order or {}).get("info") or {}
        return OrderResult(
            client_order_id=str(info.get("orderLinkId") or client_order_id),
            exchange_order_id=str(info["orderId"]) if info.get("orderId") else order.get("id"),
            status="open",  # Bybit's create reply carries no fill: look it up
            filled_qty=Decimal(0),
            avg_price=None,
            requested_qty=requested,
        )

    async def order_by_client_id(self, symbol_id: str, client_order_id: str) -> OrderResult | None:
        request = {"category": "linear", "symbol": symbol_id, "orderLinkId": client_order_id}
        for endpoint in (self._client.privateGetV5OrderRealtime, self._client.privateGetV5OrderHistory):
            response = await self._request(endpoint, dict(request))
            rows = ((response or {}).get("result") or {}).get("list") or []
            row = next((r for r in rows if r.get("orderLinkId") == client_order_id), None)
            if row is not None:
                return self.parse_order(row, client_order_id)
        return None

    def parse_order(self, row: dict, client_order_id: str) -> OrderResult:
        """One row of the order lists (``orderStatus``, ``cumExecQty``, ``avgPrice``, ``qty``)."""
        filled = dec(row.get("cumExecQty")) or Decimal(0)
        return OrderResult(
            client_order_id=str(row.get("orderLinkId") or client_order_id),
            exchange_order_id=str(row["orderId"]) if row.get("orderId") else None,
            status=_ORDER_STATUS.get(str(row.get("orderStatus") or ""), "open"),
            filled_qty=filled,
            avg_price=price(row.get("avgPrice")) if filled > 0 else None,
            requested_qty=dec(row.get("qty")),
        )

    def ban_hint(self, headers: Any) -> float | None:
        reset = header(headers, "X-Bapi-Limit-Reset-Timestamp")
        if reset is not None:
            at = ms_to_dt(reset)
            if at is not None:
                return max(0.0, (at - datetime.now(UTC)).total_seconds())
        return None
