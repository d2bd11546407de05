"""Binance USD-M fill history: ``GET /fapi/v1/userTrades`` (Account Trade List)."""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import default_window, json_response
from simulator.rest_binance.envelope import EXCHANGE, TAKER_FEE, BinanceEnvelope, mandatory_parameter
from simulator.state import Fill, dstr, dt_ms

WINDOW_MS = 7 * 86_400_000  # userTrades: "cannot be longer than 7 days"
RETENTION_MS = 183 * 86_400_000  # userTrades: "Only support querying trade in the past 6 months"


class BinanceHistory(BinanceEnvelope):
    """The trade list."""

    def _trade_row(self, f: Fill) -> dict:
        m = self.state.market(EXCHANGE, f.symbol)
        quote = f.qty * f.price
        q8 = Decimal("0.00000001")
        return {
            "buyer": f.side == "buy",
            "commission": dstr((quote * TAKER_FEE).quantize(q8)),
            "commissionAsset": "USDT",
            "id": int(f.trade_id),
            "maker": f.is_maker,
            "orderId": int(f.order_id),
            "price": m.fmt_price(f.price) if m.on_tick(f.price) else dstr(f.price),
            "qty": m.fmt_qty(f.qty),
            "quoteQty": dstr(quote),
            "realizedPnl": dstr(f.realized_pnl.quantize(q8)),
            "side": "BUY" if f.side == "buy" else "SELL",
            "positionSide": "BOTH",
            "symbol": f.symbol,
            "time": dt_ms(f.time),
        }

    async def user_trades(self, request: Request) -> Response:
        """``GET /fapi/v1/userTrades`` (Account Trade List): oldest first (trade id order).

        Rules from Binance's page: symbol is mandatory; startTime and endTime both absent:
        the last 7 days (the most recent ``limit`` trades of them); the two at most 7 days
        apart (-1127); fromId cannot go with startTime or endTime (-1128); ``limit``
        default 500, at most 1000; only the past 6 months. Not documented, taken as on
        Bybit: only startTime gives [start, start+7d], only endTime [end-7d, end]; with a
        startTime the page is the oldest ``limit`` trades of the window, without one the
        most recent (what ccxt's backward pagination by ``until`` expects).
        """
        err, p = await self._signed(request)
        if err is not None:
            return err
        symbol = (p.get("symbol") or "").upper()
        if not symbol:
            return self.error("-1102", mandatory_parameter("symbol"))
        if self.state.get_market(EXCHANGE, symbol) is None:
            return self.error("-1121")
        try:
            limit = int(p.get("limit") or 500)
            start = int(p["startTime"]) if p.get("startTime") else None
            end = int(p["endTime"]) if p.get("endTime") else None
            from_id = int(p["fromId"]) if p.get("fromId") else None
            order_id = int(p["orderId"]) if p.get("orderId") else None
        except ValueError:
            return self.error("-1100", "Illegal characters found in a parameter.")
        if limit <= 0:
            return self.error("-1100", "Illegal characters found in parameter 'limit'; legal range is '[1, 1000]'.")
        limit = min(limit, 1000)
        if from_id is not None and (start is not None or end is not None):
            return self.error("-1128", "Combination of optional parameters invalid.")
        now = self.state.now_ms()
        fills = [f for f in self.state.fills
                 if f.exchange == EXCHANGE and f.symbol == symbol and dt_ms(f.time) >= now - RETENTION_MS]
        if order_id is not None:
            fills = [f for f in fills if int(f.order_id) == order_id]
        fills.sort(key=lambda f: int(f.trade_id))
        if from_id is not None:
            fills = [f for f in fills if int(f.trade_id) >= from_id]
            return json_response([self._trade_row(f) for f in fills[:limit]])
        most_recent = start is None  # no startTime: the most recent trades (of the window)
        start, end = default_window(start, end, now, WINDOW_MS)
        if start > end:
            return self.error("-1023", "Start time is greater than end time.")
        if end - start > WINDOW_MS:
            return self.error("-1127", "More than 168 hours between startTime and endTime.")
        fills = [f for f in fills if start <= dt_ms(f.time) <= end]
        page = fills[-limit:] if most_recent else fills[:limit]
        return json_response([self._trade_row(f) for f in page])
