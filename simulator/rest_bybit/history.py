"""Bybit v5 fill history: ``GET /v5/execution/list``.

Paged newest first by ``nextPageCursor``, at most 7 days per query, 730 days kept, as
the real API documents (docs/v5/order/execution.mdx).
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import default_window
from simulator.rest_bybit.envelope import EXCHANGE, TAKER_FEE, BybitEnvelope
from simulator.state import Fill, Market, dstr, dt_ms

WINDOW_MS = 7 * 86_400_000  # execution list: at most 7 days per query (docs/v5/order/execution.mdx)
RETENTION_MS = 730 * 86_400_000  # "Unified account supports getting the past 730 days historical trades"


class BybitHistory(BybitEnvelope):
    """The execution list."""

    def _execution_row(self, f: Fill) -> dict:
        m = self.state.market(EXCHANGE, f.symbol)
        value = f.qty * f.price
        return {
            "symbol": f.symbol,
            "orderType": "Market" if f.order_type == "market" else "Limit",
            "underlyingPrice": "",
            "orderLinkId": f.client_order_id or "",
            "side": "Buy" if f.side == "buy" else "Sell",
            "indexPrice": "",
            "orderId": f.order_id,
            "stopOrderType": "UNKNOWN",
            "leavesQty": m.fmt_qty(f.leaves_qty),
            "execTime": str(dt_ms(f.time)),
            "feeCurrency": "USDT",
            "isMaker": f.is_maker,
            "execFee": dstr((value * TAKER_FEE).quantize(Decimal("0.00000001"))),
            "feeRate": dstr(TAKER_FEE),
            "execId": f.trade_id,
            "tradeIv": "",
            "blockTradeId": "",
            "markPrice": _px(m, f.mark_price if f.mark_price is not None else f.price),
            "execPrice": _px(m, f.price),
            "markIv": "",
            "orderQty": m.fmt_qty(f.order_qty if f.order_qty is not None else f.qty),
            "orderPrice": _px(m, f.order_price if f.order_price is not None else f.price),
            "execValue": dstr(value),
            "execType": "Trade",
            "execQty": m.fmt_qty(f.qty),
            "closedSize": m.fmt_qty(f.closed_qty),
            "extraFees": "",
            "seq": f.seq,
            "createType": f.create_type,
        }

    async def execution_list(self, request: Request) -> Response:
        """``GET /v5/execution/list`` (docs/v5/order/execution.mdx): newest first (execTime,
        then seq); a 7-day window — none given: the last 7 days; only startTime:
        [start, start+7d]; only endTime: [end-7d, end]; both more than 7 days apart:
        retCode 10001; ``limit`` 1..100 (default 50); ``cursor`` from ``nextPageCursor``
        ("" on the last page); orderId > orderLinkId > symbol > baseCoin, and an orderId or
        orderLinkId query ignores the other parameters; fills older than 730 days are gone."""
        err, p = await self._private(request)
        if err is not None:
            return err
        category = p.get("category")
        if category != "linear":
            if category in ("inverse", "option", "spot"):
                return self.ok({"category": category, "list": [], "nextPageCursor": ""})
            return self.error("10001", "params error: category invalid" if category else
                              "params error: category is required")
        st = self.state
        now = st.now_ms()
        try:
            limit = int(p.get("limit") or 50)
            start = int(p["startTime"]) if p.get("startTime") not in (None, "") else None
            end = int(p["endTime"]) if p.get("endTime") not in (None, "") else None
        except (TypeError, ValueError):
            return self.error("10001", "params error: limit, startTime or endTime invalid")
        if not (1 <= limit <= 100):
            return self.error("10001", "params error: limit must be between 1 and 100")
        fills = [f for f in st.fills if f.exchange == EXCHANGE and dt_ms(f.time) >= now - RETENTION_MS]
        oid = p.get("orderId") or None
        cid = p.get("orderLinkId") or None
        if oid is not None:
            fills = [f for f in fills if f.order_id == str(oid)]
        elif cid is not None:
            fills = [f for f in fills if f.client_order_id == str(cid)]
        else:
            start, end = default_window(start, end, now, WINDOW_MS)
            if start > end:
                return self.error("10001", "params error: startTime should be less than endTime")
            if end - start > WINDOW_MS:
                return self.error("10001", "params error: The time range between startTime and endTime "
                                           "cannot exceed 7 days")
            symbol = (p.get("symbol") or "").upper()
            base = (p.get("baseCoin") or "").upper()
            if symbol:
                fills = [f for f in fills if f.symbol == symbol]
            elif base:
                fills = [f for f in fills if st.market(EXCHANGE, f.symbol).base == base]
            fills = [f for f in fills if start <= dt_ms(f.time) <= end]
        exec_type = p.get("execType")
        if exec_type and exec_type != "Trade":  # every simulated execution is a Trade
            fills = []
        fills.sort(key=lambda f: (dt_ms(f.time), f.seq), reverse=True)
        cursor = _cursor_seq(p.get("cursor"))
        if cursor is not None:
            at = next((i for i, f in enumerate(fills) if f.seq == cursor), None)
            fills = fills[at + 1:] if at is not None else []
        page, more = fills[:limit], len(fills) > limit
        next_cursor = f"{page[-1].seq}%3A1%2C{page[-1].seq}%3A1" if more else ""
        return self.ok({"nextPageCursor": next_cursor, "category": "linear",
                        "list": [self._execution_row(f) for f in page]})


def _px(m: Market, price: Decimal) -> str:
    """A price as Bybit prints it: on the tick grid's decimals (or in full when off it)."""
    return m.fmt_price(price) if m.on_tick(price) else dstr(price)


def _cursor_seq(cursor) -> int | None:
    """The fill seq a ``nextPageCursor`` ("SEQ%3A1%2CSEQ%3A1", maybe encoded twice) points at."""
    if not cursor:
        return None
    text = str(cursor)
    for _ in range(3):
        text = unquote(text)
    head = text.split(":", 1)[0].split(",", 1)[0]
    return int(head) if head.isdigit() else -1
