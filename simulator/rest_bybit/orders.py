"""Bybit v5 orders: create, cancel, and the open and past orders.

``POST /v5/order/create``, ``POST /v5/order/cancel``, ``GET /v5/order/realtime``,
``GET /v5/order/history``. A rejected order is recorded with the code and message the
real API gives (it still answers HTTP 200, with a non-zero ``retCode``); the
``reject_next`` and ``drop_reply`` faults act on ``order/create``.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import parse_bool, reply_or_drop
from simulator.rest_bybit.envelope import EXCHANGE, MESSAGES, TAKER_FEE, BybitEnvelope
from simulator.state import Market, Order, SimError, dstr, dt_ms, to_decimal

log = logging.getLogger(__name__)

NO_POSITION_MSG = "current position is zero, cannot fix reduce-only order qty"


class _Reject(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class BybitOrders(BybitEnvelope):
    """The order endpoints."""

    @staticmethod
    def _status(o: Order) -> str:
        if o.canceled_by_user:
            return "Cancelled"
        return {
            "filled": "Filled",
            "new": "New",
            "rejected": "Rejected",
            "canceled": "Cancelled",
            "partially_filled": "PartiallyFilled" if o.is_open else "PartiallyFilledCanceled",
        }[o.status]

    def _order_row(self, o: Order) -> dict:
        m = self.state.market(EXCHANGE, o.symbol)
        eff = o.effective_qty if o.effective_qty is not None else o.qty
        leaves = o.remaining_qty
        value = o.cum_quote
        tif = {"GTX": "PostOnly"}.get(o.time_in_force, o.time_in_force)
        return {
            "orderId": o.order_id,
            "orderLinkId": o.client_order_id or "",
            "blockTradeId": "",
            "symbol": o.symbol,
            "price": m.fmt_price(o.price) if o.price is not None else "0",
            "qty": m.fmt_qty(eff),
            "side": "Buy" if o.side == "buy" else "Sell",
            "isLeverage": "",
            "positionIdx": 0,
            "orderStatus": self._status(o),
            "createType": "CreateByUser",
            "cancelType": "CancelByUser" if o.canceled_by_user else "UNKNOWN",
            "rejectReason": "EC_NoError",
            "avgPrice": m.fmt_price(o.avg_price) if o.avg_price is not None else "",
            "leavesQty": m.fmt_qty(leaves),
            "leavesValue": dstr(leaves * (o.price or Decimal(0))),
            "cumExecQty": m.fmt_qty(o.filled_qty),
            "cumExecValue": dstr(value),
            "cumExecFee": dstr((value * TAKER_FEE).quantize(Decimal("0.00000001"))),
            "timeInForce": tif,
            "orderType": "Market" if o.type == "market" else "Limit",
            "stopOrderType": "",
            "orderIv": "",
            "marketUnit": "",
            "triggerPrice": "",
            "takeProfit": "",
            "stopLoss": "",
            "tpslMode": "",
            "ocoTriggerBy": "",
            "tpLimitPrice": "",
            "slLimitPrice": "",
            "tpTriggerBy": "",
            "slTriggerBy": "",
            "triggerDirection": 0,
            "triggerBy": "",
            "lastPriceOnCreated": m.fmt_price(o.fill_quote.last) if o.fill_quote else "",
            "basePrice": "",
            "reduceOnly": o.reduce_only,
            "closeOnTrigger": False,
            "placeType": "",
            "smpType": "None",
            "smpGroup": 0,
            "smpOrderId": "",
            "createdTime": str(dt_ms(o.time)),
            "updatedTime": str(dt_ms(o.updated_at or o.time)),
        }

    def _parse_order(self, p: dict, out: dict) -> dict:
        """Validate an order/create body into ``out``; raises _Reject with Bybit's code."""
        out.update({"symbol": None, "side": None, "type": None, "qty": None, "price": None,
                    "tif": None, "reduce_only": False, "cid": None})
        ro = p.get("reduceOnly", False)
        ro_b = parse_bool(ro)
        out["reduce_only"] = bool(ro_b)
        cid = p.get("orderLinkId")
        if cid is not None and cid != "":
            out["cid"] = str(cid)
        if p.get("category") != "linear":
            raise _Reject("10001", "params error: category only support linear")
        symbol = str(p.get("symbol") or "").upper()
        out["symbol"] = symbol or None
        m = self.state.get_market(EXCHANGE, symbol) if symbol else None
        if m is None:
            raise _Reject("10001", "params error: symbol invalid")
        side = p.get("side")
        if side not in ("Buy", "Sell"):
            raise _Reject("10001", "params error: side invalid")
        out["side"] = side.lower()
        otype = p.get("orderType")
        if otype not in ("Market", "Limit"):
            raise _Reject("10001", "params error: orderType invalid")
        out["type"] = otype.lower()
        if ro_b is None:
            raise _Reject("10001", "params error: reduceOnly invalid")
        try:
            qty = to_decimal(p.get("qty"), "qty", positive=True)
        except SimError:
            raise _Reject("10001", "params error: qty invalid") from None
        out["qty"] = qty
        limit = m.max_market_qty if otype == "Market" else m.max_qty
        if qty > limit:
            raise _Reject("10001", f"The number of contracts exceeds maximum limit allowed: {dstr(limit)}")
        if not m.on_step(qty):
            raise _Reject("10001", f"Qty invalid: qty must be a multiple of {dstr(m.qty_step)}")
        if qty < m.min_qty:
            raise _Reject("10001", f"The number of contracts exceeds minimum limit allowed: {dstr(m.min_qty)}")
        tif = p.get("timeInForce")
        if otype == "Market":
            out["tif"] = "IOC"  # Bybit runs market orders as IOC
        else:
            tif = tif or "GTC"
            if tif not in ("GTC", "IOC", "FOK", "PostOnly"):
                raise _Reject("10001", "params error: timeInForce invalid")
            out["tif"] = "GTX" if tif == "PostOnly" else tif
            try:
                price = to_decimal(p.get("price"), "price", positive=True)
            except SimError:
                raise _Reject("10001", "params error: price invalid") from None
            out["price"] = price
            if not m.on_tick(price):
                raise _Reject("10001", f"params error: price must be a multiple of tick size {dstr(m.tick_size)}")
        if out["cid"] is not None and len(out["cid"]) > 36:
            raise _Reject("10001", "params error: orderLinkId is too long (max 36)")
        pidx = p.get("positionIdx")
        if pidx not in (None, 0, "0"):
            raise _Reject("10001", "position idx not match position mode")
        out["market"] = m
        return out

    async def order_create(self, request: Request) -> Response:
        err, p = await self._private(request)
        if err is not None:
            return err
        drop = self.state.faults.take_drop_reply(EXCHANGE)
        return await reply_or_drop(request, self._order_create(p, self._api_key(request)), drop, "bybit order/create")

    def _order_create(self, p: dict, api_key: str | None) -> Response:
        st = self.state
        parsed: dict = {}
        try:
            self._parse_order(p, parsed)
            cid = parsed["cid"]
            if cid is not None and st.client_id_used(EXCHANGE, cid):
                raise _Reject("110072", MESSAGES["110072"])
            rule = st.faults.take_reject(EXCHANGE)
            if rule is not None:
                code = rule.code or "110017"
                raise _Reject(code, rule.message or MESSAGES.get(code, "simulated rejection"))
            m: Market = parsed["market"]
            if parsed["reduce_only"]:
                problem = st.reduce_only_problem(EXCHANGE, m.symbol_id, parsed["side"])
                if problem == "no_position":
                    raise _Reject("110017", NO_POSITION_MSG)
                if problem == "would_increase":
                    raise _Reject("110017", MESSAGES["110017"])
            else:
                q = st.quote(EXCHANGE, m.symbol_id)
                ref = parsed["price"] or (q.ask if parsed["side"] == "buy" else q.bid)
                if parsed["qty"] * ref < m.min_notional:
                    raise _Reject("110094", f"{MESSAGES['110094']} {dstr(m.min_notional)}USDT")
        except _Reject as r:
            st.record_rejected(
                EXCHANGE,
                symbol=parsed.get("symbol") or _peek_symbol(p),
                side=parsed.get("side") or _peek(p, "side", str.lower),
                type=parsed.get("type") or _peek(p, "orderType", str.lower),
                qty=parsed.get("qty") or _peek_dec(p, "qty"),
                price=parsed.get("price") or _peek_dec(p, "price"),
                time_in_force=parsed.get("tif") or _peek(p, "timeInForce"),
                reduce_only=bool(parsed.get("reduce_only")),
                client_order_id=parsed.get("cid"),
                code=r.code,
                message=r.message,
                api_key=api_key,
            )
            return self.error(r.code, r.message)
        o = st.execute_order(
            EXCHANGE,
            parsed["market"],
            side=parsed["side"],
            type=parsed["type"],
            qty=parsed["qty"],
            price=parsed["price"],
            time_in_force=parsed["tif"],
            reduce_only=parsed["reduce_only"],
            client_order_id=parsed["cid"],
            reduce_only_cap="shrink",
            api_key=api_key,
        )
        return self.ok({"orderId": o.order_id, "orderLinkId": o.client_order_id or ""})

    async def order_cancel(self, request: Request) -> Response:
        err, p = await self._private(request)
        if err is not None:
            return err
        if p.get("category") != "linear":
            return self.error("10001", "params error: category only support linear")
        symbol = str(p.get("symbol") or "").upper()
        if self.state.get_market(EXCHANGE, symbol) is None:
            return self.error("10001", "params error: symbol invalid")
        oid, cid = p.get("orderId") or None, p.get("orderLinkId") or None
        if oid is None and cid is None:
            return self.error("10001", "params error: orderId or orderLinkId is required")
        if oid:
            o = self.state.find_order(EXCHANGE, order_id=str(oid))
        else:
            o = self.state.find_order(EXCHANGE, client_order_id=str(cid))
        if o is None or o.symbol != symbol or not o.is_open:
            return self.error("110001")
        self.state.cancel_order(o)
        return self.ok({"orderId": o.order_id, "orderLinkId": o.client_order_id or ""})

    def _select_orders(self, p: dict, *, history: bool) -> list[Order] | Response:
        if p.get("category") != "linear":
            if p.get("category") in ("inverse", "option", "spot"):
                return []
            return self.error("10001", "params error: category invalid")
        symbol = (p.get("symbol") or "").upper() or None
        oid = p.get("orderId") or None
        cid = p.get("orderLinkId") or None
        try:
            limit = int(p.get("limit") or (50 if not history else 20))
        except ValueError:
            return self.error("10001", "params error: limit invalid")
        orders = self.state.accepted_orders(EXCHANGE)
        if oid is not None:  # priority: orderId > orderLinkId > symbol
            orders = [o for o in orders if o.order_id == oid]
        elif cid is not None:
            orders = [o for o in orders if o.client_order_id == cid]
        else:
            if history:
                orders = [o for o in orders if not o.is_open]
            else:
                open_only = str(p.get("openOnly", "0"))
                orders = [o for o in orders if o.is_open] if open_only == "0" else [o for o in orders if not o.is_open]
        if symbol is not None:
            orders = [o for o in orders if o.symbol == symbol]
        status = p.get("orderStatus")
        if status:
            orders = [o for o in orders if self._status(o) == status]
        try:
            start = int(p["startTime"]) if p.get("startTime") else None
            end = int(p["endTime"]) if p.get("endTime") else None
        except (TypeError, ValueError):
            return self.error("10001", "params error: startTime/endTime invalid")
        if start is not None:
            orders = [o for o in orders if dt_ms(o.time) >= start]
        if end is not None:
            orders = [o for o in orders if dt_ms(o.time) <= end]
        orders.reverse()  # newest first
        return orders[: max(1, min(limit, 50))]

    async def order_realtime(self, request: Request) -> Response:
        err, p = await self._private(request)
        if err is not None:
            return err
        sel = self._select_orders(p, history=False)
        if isinstance(sel, Response):
            return sel
        return self.ok({"category": "linear", "list": [self._order_row(o) for o in sel], "nextPageCursor": ""})

    async def order_history(self, request: Request) -> Response:
        err, p = await self._private(request)
        if err is not None:
            return err
        sel = self._select_orders(p, history=True)
        if isinstance(sel, Response):
            return sel
        return self.ok({"category": "linear", "list": [self._order_row(o) for o in sel], "nextPageCursor": ""})


def _peek(p: dict, key: str, fn=None):
    v = p.get(key)
    if not isinstance(v, str) or not v:
        return None
    return fn(v) if fn else v


def _peek_symbol(p: dict) -> str | None:
    v = p.get("symbol")
    return v.upper() if isinstance(v, str) and v else None


def _peek_dec(p: dict, key: str) -> Decimal | None:
    try:
        return to_decimal(p.get(key), key)
    except SimError:
        return None
