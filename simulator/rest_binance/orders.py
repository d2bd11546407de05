"""Binance USD-M orders: ``POST|GET|DELETE /fapi/v1/order``, open and all orders.

``POST /fapi/v1/order`` answers per ``newOrderRespType``: ``RESULT`` (what ccxt sends)
gives the order's state after matching (``FILLED``, or ``EXPIRED`` for an IOC/market
remainder); ``ACK`` (the API default) gives ``NEW`` with nothing executed. The
``binance_market_new`` fault answers MARKET orders ``NEW`` even under ``RESULT``, as the
real exchange often does; the fill is done either way and ``GET /fapi/v1/order`` shows it.
``GET /fapi/v1/openOrders`` and ``/fapi/v1/allOrders`` list them.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import json_response, reply_or_drop
from simulator.rest_binance.envelope import EXCHANGE, MESSAGES, BinanceEnvelope, illegal_parameter, mandatory_parameter
from simulator.state import Market, Order, SimError, dstr, dt_ms, to_decimal

log = logging.getLogger(__name__)

CLIENT_ID_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")


class _Reject(Exception):
    def __init__(self, code: str, message: str | None = None):
        super().__init__(message)
        self.code = str(code)
        self.message = message or MESSAGES.get(self.code, "simulated rejection")


class BinanceOrders(BinanceEnvelope):
    """The order endpoints."""

    @staticmethod
    def _status(o: Order) -> str:
        if o.canceled_by_user:
            return "CANCELED"
        if o.status == "filled":
            return "FILLED"
        if o.status == "new":
            return "NEW"
        if o.status == "partially_filled":
            return "PARTIALLY_FILLED" if o.is_open else "EXPIRED"
        if o.status == "canceled":
            return "EXPIRED"  # an IOC/market/FOK/GTX remainder expires
        return "REJECTED"

    def _order_row(self, o: Order, *, with_time: bool = True, as_new: bool = False) -> dict:
        m = self.state.market(EXCHANGE, o.symbol)
        otype = "MARKET" if o.type == "market" else "LIMIT"
        filled = Decimal(0) if as_new else o.filled_qty
        avg = None if as_new else o.avg_price
        cum = Decimal(0) if as_new else o.cum_quote
        row = {
            "orderId": int(o.order_id),
            "symbol": o.symbol,
            "status": "NEW" if as_new else self._status(o),
            "clientOrderId": o.client_order_id,
            "price": m.fmt_price(o.price if o.price is not None else Decimal(0)),
            "avgPrice": m.fmt_price(avg) if avg is not None else "0.00",
            "origQty": m.fmt_qty(o.qty),
            "executedQty": m.fmt_qty(filled),
            "cumQty": m.fmt_qty(filled),
            "cumQuote": dstr(cum.quantize(Decimal("0.00000001"))) if cum else "0",
            "timeInForce": o.time_in_force if o.type == "limit" else "GTC",
            "type": otype,
            "reduceOnly": o.reduce_only,
            "closePosition": False,
            "side": "BUY" if o.side == "buy" else "SELL",
            "positionSide": "BOTH",
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": otype,
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
            "updateTime": dt_ms(o.time if as_new else (o.updated_at or o.time)),
        }
        if with_time:  # a looked-up order (Query Order): "time", and no "cumQty" (the create reply's)
            row["time"] = dt_ms(o.time)
            del row["cumQty"]
        return row

    def _parse_order(self, p: dict, out: dict) -> None:
        out.update({"symbol": None, "side": None, "type": None, "qty": None, "price": None, "tif": None,
                    "reduce_only": False, "cid": None})
        ro = (p.get("reduceOnly") or "false").lower()
        out["reduce_only"] = ro == "true"
        cid = p.get("newClientOrderId")
        out["cid"] = cid or None
        symbol = (p.get("symbol") or "").upper()
        if not symbol:
            raise _Reject("-1102", mandatory_parameter("symbol"))
        out["symbol"] = symbol
        m = self.state.get_market(EXCHANGE, symbol)
        if m is None:
            raise _Reject("-1121")
        side = p.get("side")
        if side not in ("BUY", "SELL"):
            raise _Reject("-1117") if side else _Reject("-1102", mandatory_parameter("side"))
        out["side"] = side.lower()
        otype = p.get("type")
        if otype not in ("MARKET", "LIMIT"):
            raise _Reject("-1116") if otype else _Reject("-1102", mandatory_parameter("type"))
        out["type"] = otype.lower()
        if ro not in ("true", "false"):
            raise _Reject("-1102", "Data sent for parameter 'reduceOnly' is not valid.")
        if p.get("positionSide", "BOTH") != "BOTH":
            raise _Reject("-4061")
        if cid is not None and not CLIENT_ID_RE.match(cid):
            raise _Reject(
                "-1100",
                "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.",
            )
        raw_qty = p.get("quantity")
        if not raw_qty:
            raise _Reject("-1102", mandatory_parameter("quantity"))
        try:
            qty = to_decimal(raw_qty, "quantity")
        except SimError:
            raise _Reject("-1100", illegal_parameter("quantity")) from None
        out["qty"] = qty
        if qty <= 0:
            raise _Reject("-4003")
        if qty > (m.max_market_qty if otype == "MARKET" else m.max_qty):
            raise _Reject("-4005")
        if not m.on_step(qty):
            raise _Reject("-1111")
        tif = p.get("timeInForce")
        if otype == "MARKET":
            if p.get("price"):
                raise _Reject("-1106", "Parameter 'price' sent when not required.")
            if tif:
                raise _Reject("-1106", "Parameter 'timeInForce' sent when not required.")
            out["tif"] = "IOC"
        else:
            if not tif:
                raise _Reject("-1102", mandatory_parameter("timeInForce"))
            if tif not in ("GTC", "IOC", "FOK", "GTX"):
                raise _Reject("-1115", "Invalid timeInForce.")
            out["tif"] = tif
            raw_price = p.get("price")
            if not raw_price:
                raise _Reject("-1102", mandatory_parameter("price"))
            try:
                price = to_decimal(raw_price, "price")
            except SimError:
                raise _Reject("-1100", illegal_parameter("price")) from None
            out["price"] = price
            if price <= 0:
                raise _Reject("-4001", "Price less than 0.")
            if not m.on_tick(price):
                raise _Reject("-4014")
        out["market"] = m

    async def order_new(self, request: Request) -> Response:
        err, p = await self._signed(request)
        if err is not None:
            return err
        drop = self.state.faults.take_drop_reply(EXCHANGE)
        return await reply_or_drop(request, self._order_new(p, self._api_key(request)), drop, "binance order")

    def _order_new(self, p: dict, api_key: str | None) -> Response:
        st = self.state
        parsed: dict = {}
        try:
            self._parse_order(p, parsed)
            m: Market = parsed["market"]
            cid = parsed["cid"]
            if cid is not None and st.client_id_used(EXCHANGE, cid):
                raise _Reject("-4116")
            rule = st.faults.take_reject(EXCHANGE)
            if rule is not None:
                raise _Reject(rule.code or "-2022", rule.message)
            if parsed["reduce_only"]:
                if st.reduce_only_problem(EXCHANGE, m.symbol_id, parsed["side"]) is not None:
                    raise _Reject("-2022")
            else:
                q = st.quote(EXCHANGE, m.symbol_id)
                ref = parsed["price"] or (q.ask if parsed["side"] == "buy" else q.bid)
                if parsed["qty"] * ref < m.min_notional:
                    raise _Reject(
                        "-4164",
                        f"Order's notional must be no smaller than {dstr(m.min_notional)} "
                        "(unless you choose reduce only).",
                    )
        except _Reject as r:
            st.record_rejected(
                EXCHANGE,
                symbol=parsed.get("symbol"),
                side=parsed.get("side"),
                type=parsed.get("type"),
                qty=parsed.get("qty"),
                price=parsed.get("price"),
                time_in_force=parsed.get("tif"),
                reduce_only=bool(parsed.get("reduce_only")),
                client_order_id=parsed.get("cid"),
                code=r.code,
                message=r.message,
                api_key=api_key,
            )
            return self.error(r.code, r.message)
        cid = parsed["cid"] or ("sim" + st.new_order_id("bybit").replace("-", "")[:19])
        o = st.execute_order(
            EXCHANGE,
            parsed["market"],
            side=parsed["side"],
            type=parsed["type"],
            qty=parsed["qty"],
            price=parsed["price"],
            time_in_force=parsed["tif"],
            reduce_only=parsed["reduce_only"],
            client_order_id=cid,
            reduce_only_cap="expire",
            api_key=api_key,
        )
        resp_type = p.get("newOrderRespType", "ACK")
        as_new = resp_type != "RESULT" or (o.type == "market" and st.faults.binance_market_new)
        return json_response(self._order_row(o, with_time=False, as_new=as_new))

    def _lookup(self, p: dict) -> tuple[Order | None, Response | None]:
        symbol = (p.get("symbol") or "").upper()
        if not symbol:
            return None, self.error("-1102", mandatory_parameter("symbol"))
        if self.state.get_market(EXCHANGE, symbol) is None:
            return None, self.error("-1121")
        oid = p.get("orderId") or None
        cid = p.get("origClientOrderId") or None
        if oid is None and cid is None:
            msg = "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
            return None, self.error("-1102", msg)
        o = self.state.find_order(EXCHANGE, order_id=oid, client_order_id=cid) if oid else self.state.find_order(
            EXCHANGE, client_order_id=cid
        )
        if o is not None and o.symbol != symbol:
            o = None
        return o, None

    async def order_get(self, request: Request) -> Response:
        err, p = await self._signed(request)
        if err is not None:
            return err
        o, err = self._lookup(p)
        if err is not None:
            return err
        if o is None:
            return self.error("-2013")
        return json_response(self._order_row(o))

    async def order_cancel(self, request: Request) -> Response:
        err, p = await self._signed(request)
        if err is not None:
            return err
        o, err = self._lookup(p)
        if err is not None:
            return err
        if o is None or not o.is_open:
            return self.error("-2011")
        self.state.cancel_order(o)
        return json_response(self._order_row(o, with_time=False))

    async def open_orders(self, request: Request) -> Response:
        err, p = await self._signed(request)
        if err is not None:
            return err
        symbol = (p.get("symbol") or "").upper()
        if symbol and self.state.get_market(EXCHANGE, symbol) is None:
            return self.error("-1121")
        rows = [self._order_row(o) for o in self.state.accepted_orders(EXCHANGE)
                if o.is_open and (not symbol or o.symbol == symbol)]
        return json_response(rows)

    async def all_orders(self, request: Request) -> Response:
        err, p = await self._signed(request)
        if err is not None:
            return err
        symbol = (p.get("symbol") or "").upper()
        if not symbol:
            return self.error("-1102", mandatory_parameter("symbol"))
        if self.state.get_market(EXCHANGE, symbol) is None:
            return self.error("-1121")
        try:
            limit = max(1, min(int(p.get("limit", "500")), 1000))
        except ValueError:
            return self.error("-1102", mandatory_parameter("limit"))
        orders = [o for o in self.state.accepted_orders(EXCHANGE) if o.symbol == symbol]
        if p.get("orderId"):
            try:
                start_id = int(p["orderId"])
            except ValueError:
                return self.error("-1102", mandatory_parameter("orderId"))
            orders = [o for o in orders if int(o.order_id) >= start_id]
        return json_response([self._order_row(o) for o in orders[-limit:]])
