"""Bybit v5 REST (linear perpetuals), enough for ccxt's real ``bybit`` client.

Mounted under ``/bybit``: a ccxt client whose ``urls['api']`` entries all point at
``http://HOST:PORT/bybit`` talks to this module unchanged.

Public: ``GET /v5/market/time``, ``/v5/market/instruments-info`` (``category=linear``;
other categories and ``status=PreLaunch`` give an empty list), ``/v5/market/tickers``,
``/v5/market/orderbook``.

Private (headers ``X-BAPI-API-KEY``, ``X-BAPI-TIMESTAMP``, ``X-BAPI-RECV-WINDOW``,
``X-BAPI-SIGN`` = hex HMAC-SHA256(secret, timestamp + key + recvWindow + (query string
| body))): ``GET /v5/position/list``, ``POST /v5/order/create``, ``POST
/v5/order/cancel``, ``GET /v5/order/realtime``, ``GET /v5/order/history``, ``GET
/v5/execution/list`` (the fill history), and the account probes ccxt may make on its
own (``/v5/user/query-api``, ``/v5/account/info``, ``/v5/asset/coin/query-info``,
``/v5/account/wallet-balance``).

The position list's ``createdTime`` is when a position was first ever created on the
symbol, ``updatedTime`` the last change, and ``openTime`` follows the
``position_open_time`` setting (see :mod:`simulator.admin`).

Business errors come back as HTTP 200 with a non-zero ``retCode``, like the real API.
Faults (:class:`simulator.state.Faults`) are applied to private requests only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from decimal import Decimal
from urllib.parse import unquote

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from simulator.state import (
    Fill,
    Market,
    Order,
    SimError,
    SimState,
    dstr,
    dt_ms,
    to_decimal,
)

log = logging.getLogger(__name__)

EXCHANGE = "bybit"
TAKER_FEE = Decimal("0.00055")
MAX_DROP_HOLD_S = 300.0  # a dropped reply holds the request at most this long
WINDOW_MS = 7 * 86_400_000  # execution list: at most 7 days per query (docs/v5/order/execution.mdx)
RETENTION_MS = 730 * 86_400_000  # "Unified account supports getting the past 730 days historical trades"

# real codes and messages (https://bybit-exchange.github.io/docs/v5/error)
MESSAGES = {
    "10001": "params error",
    "10002": "invalid request, please check your server timestamp or recv_window param",
    "10003": "API key is invalid.",
    "10004": "error sign!",
    "10005": "Permission denied, please check your API key permissions.",
    "10006": "Too many visits!",
    "10016": "Internal server error.",
    "110001": "order not exists or too late to cancel",
    "110004": "Insufficient wallet balance",
    "110007": "ab not enough for new order",
    "110012": "Insufficient available balance",
    "110017": "Reduce-only rule not satisfied",
    "110072": "OrderLinkedID is duplicate",
    "110094": "Order does not meet minimum order value",
    "30208": "Failed to submit order(s). The order price is higher than the maximum buying price.",
    "30209": "Failed to submit order(s). The order price is lower than the minimum selling price.",
}
NO_POSITION_MSG = "current position is zero, cannot fix reduce-only order qty"


# ------------------------------------------------------------------ HTTP helpers (shared)


def json_response(payload, status: int = 200, headers: dict | None = None) -> Response:
    """Compact JSON, one body: hypercorn writes headers+body back to back."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class NoReply(Response):
    """A response that sends nothing (the "reply lost" fault)."""

    def __init__(self) -> None:  # noqa: D107 - nothing to set up
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        return None


async def hold_until_disconnect(request: Request, max_hold: float = MAX_DROP_HOLD_S) -> None:
    """Keep the request open, unanswered, until the client gives up (or ``max_hold``)."""
    with anyio.move_on_after(max_hold):
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                return


def service_unavailable() -> Response:
    return Response(
        b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        status_code=503,
        media_type="text/html",
    )


def parse_bool(value) -> bool | None:
    """JSON true/false or the strings "true"/"false" (any case); None if neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


# ------------------------------------------------------------------------- the API


class _Reject(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class BybitAPI:
    def __init__(self, state: SimState):
        self.state = state

    # --------------------------------------------------------------- envelope

    def ok(self, result, headers: dict | None = None) -> Response:
        return json_response(
            {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": self.state.now_ms()},
            headers=headers,
        )

    def error(self, code, message: str | None = None, status: int = 200) -> Response:
        code = str(code)
        return json_response(
            {
                "retCode": int(code),
                "retMsg": message or MESSAGES.get(code, "simulated error"),
                "result": {},
                "retExtInfo": {},
                "time": self.state.now_ms(),
            },
            status=status,
        )

    # ------------------------------------------------------------------ auth

    def _check_signature(self, request: Request, payload: str) -> Response | None:
        h = request.headers
        key = h.get("x-bapi-api-key")
        if not key or key not in self.state.api_keys:
            return self.error("10003")
        ts = h.get("x-bapi-timestamp", "")
        recv = h.get("x-bapi-recv-window", "5000")
        sign = h.get("x-bapi-sign", "")
        try:
            ts_i = int(ts)
            recv_i = int(recv)
        except ValueError:
            return self.error("10002")
        now = self.state.now_ms()
        if not (now - recv_i <= ts_i < now + 1000):
            return self.error(
                "10002",
                f"{MESSAGES['10002']}. req_timestamp[{ts_i}],server_timestamp[{now}],recv_window[{recv_i}]",
            )
        secret = self.state.api_keys[key].encode()
        candidates = [payload]
        unquoted = unquote(payload)
        if unquoted != payload:
            candidates.append(unquoted)
        for p in candidates:
            expected = hmac.new(secret, (ts + key + recv + p).encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, sign.lower()):
                return None
        return self.error("10004", f"error sign! origin_string[{ts + key + recv + payload}]")

    async def _private(self, request: Request) -> tuple[Response | None, dict]:
        """Faults, then signature. Returns (error response or None, params)."""
        faults = self.state.faults
        if faults.take_http_5xx(EXCHANGE):
            return service_unavailable(), {}
        if faults.take_rate_limit(EXCHANGE):
            # the API-key rate limit: HTTP 200, retCode 10006, with the limit headers
            resp = self.error("10006")
            resp.headers["X-Bapi-Limit"] = "10"
            resp.headers["X-Bapi-Limit-Status"] = "0"
            resp.headers["X-Bapi-Limit-Reset-Timestamp"] = str(self.state.now_ms() + 1000)
            return resp, {}
        if request.method == "GET":
            payload = request.scope.get("query_string", b"").decode("latin-1")
            params = dict(request.query_params)
        else:
            raw = await request.body()
            payload = raw.decode("utf-8", "replace")
            try:
                params = json.loads(raw) if raw else {}
            except ValueError:
                params = None
        err = self._check_signature(request, payload)
        if err is not None:
            return err, {}
        if not isinstance(params, dict):
            return self.error("10001", "params error: request body is not a JSON object"), {}
        return None, params

    # ------------------------------------------------------------ public

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
            "isPreListing": False,
            "preListingInfo": None,
            "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
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

    # ------------------------------------------------------------- private

    def _position_row(self, m: Market, pos) -> dict:
        q = self.state.quote(EXCHANGE, m.symbol_id)
        mark = q.last
        st = self.state
        # createdTime: "Timestamp of the first time a position was created on this symbol"
        # (docs/v5/position/position.mdx) — not the opening of the current position.
        first = st.first_opened(EXCHANGE, m.symbol_id)
        last = st.last_fill(EXCHANGE, m.symbol_id)
        created = str(dt_ms(first)) if first is not None else str(st.now_ms())
        updated = str(dt_ms(last.time)) if last is not None else str(st.now_ms())
        cum = dstr(st.cum_realised_pnl(EXCHANGE, m.symbol_id))
        if pos is None:
            zero = {"size": "0", "side": "", "avgPrice": "0", "positionValue": "", "unrealisedPnl": "",
                    "createdTime": created, "updatedTime": updated,
                    "positionIM": "", "positionMM": "", "cumRealisedPnl": cum, "curRealisedPnl": "0"}
        else:
            value = pos.qty * pos.entry_price
            zero = {
                "size": m.fmt_qty(pos.qty),
                "side": "Buy" if pos.side == "long" else "Sell",
                "avgPrice": dstr(pos.entry_price),
                "positionValue": dstr(value),
                "unrealisedPnl": dstr(pos.unrealised_pnl(mark).quantize(Decimal("0.00000001"))),
                "createdTime": created,
                "updatedTime": updated,
                "positionIM": dstr((value / 10).quantize(Decimal("0.00000001"))),
                "positionMM": dstr((value * Decimal("0.005")).quantize(Decimal("0.00000001"))),
                "cumRealisedPnl": cum,
                "curRealisedPnl": dstr(pos.realised_pnl),
            }
        mode = st.position_open_time[EXCHANGE]
        if mode == "zero":
            zero["openTime"] = "0"
        elif mode == "real":
            zero["openTime"] = str(dt_ms(pos.opened_at)) if pos is not None else "0"
        idx = 0
        if self.state.hedge_mode[EXCHANGE]:
            idx = 2 if pos is not None and pos.side == "short" else 1
        return {
            "positionIdx": idx,
            "riskId": 1,
            "riskLimitValue": "2000000",
            "symbol": m.symbol_id,
            "tradeMode": 0,
            "positionStatus": "Normal",
            "autoAddMargin": 0,
            "adlRankIndicator": 2 if pos is not None else 0,
            "leverage": "10",
            "positionBalance": "0",
            "markPrice": m.fmt_price(mark),
            "liqPrice": "",
            "bustPrice": "",
            "tpslMode": "Full",
            "takeProfit": "0",
            "stopLoss": "0",
            "trailingStop": "0",
            "sessionAvgPrice": "",
            "isReduceOnly": False,
            "mmrSysUpdatedTime": "",
            "leverageSysUpdatedTime": "",
            "seq": last.seq if last is not None else -1,  # -1: the symbol has never been traded
            **zero,
        }

    async def position_list(self, request: Request) -> Response:
        err, p = await self._private(request)
        if err is not None:
            return err
        category = p.get("category")
        if category != "linear":
            if category in ("inverse", "option"):
                return self.ok({"category": category, "list": [], "nextPageCursor": ""})
            return self.error("10001", "params error: category invalid")
        symbol = (p.get("symbol") or "").upper()
        settle = p.get("settleCoin")
        base = p.get("baseCoin")
        if not symbol and not settle and not base:
            return self.error("10001", "params error: symbol or settleCoin is required")
        rows = []
        if symbol:
            m = self.state.get_market(EXCHANGE, symbol)
            if m is None:
                return self.error("10001", "params error: symbol invalid")
            # a flat symbol still answers one row with size "0", as the real API does
            row = self._position_row(m, self.state.position(EXCHANGE, symbol))
            rows.append(self.state.faults.override_row(EXCHANGE, m.symbol_id, row))
        else:
            if settle and settle.upper() != "USDT":
                return self.ok({"category": "linear", "list": [], "nextPageCursor": ""})
            for pos in self.state.list_positions(EXCHANGE):
                m = self.state.market(EXCHANGE, pos.symbol)
                if base and m.base != base.upper():
                    continue
                if self.state.faults.take_omission(EXCHANGE, m.symbol_id):
                    continue
                rows.append(self.state.faults.override_row(EXCHANGE, m.symbol_id, self._position_row(m, pos)))
        return self.ok({"category": "linear", "list": rows, "nextPageCursor": ""})

    # -- orders

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
        response = self._order_create(p)
        if drop:
            log.info("simulator: bybit order/create reply dropped (fault)")
            await hold_until_disconnect(request)
            return NoReply()
        return response

    def _order_create(self, p: dict) -> Response:
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

    # -- fills

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
            if start is None and end is None:
                start, end = now - WINDOW_MS, now
            elif start is None:
                start = end - WINDOW_MS
            elif end is None:
                end = start + WINDOW_MS
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

    # -- account probes ccxt makes unless told not to

    async def query_api(self, request: Request) -> Response:
        err, _ = await self._private(request)
        if err is not None:
            return err
        key = request.headers.get("x-bapi-api-key", "")
        return self.ok(
            {
                "id": "1", "note": "simulator", "apiKey": key, "readOnly": 0, "secret": "",
                "permissions": {"ContractTrade": ["Order", "Position"], "Spot": [], "Wallet": [],
                                "Options": [], "Derivatives": [], "CopyTrading": [], "BlockTrade": [],
                                "Exchange": [], "NFT": [], "Affiliate": []},
                "ips": ["*"], "type": 1, "deadlineDay": 90, "expiredAt": "", "createdAt": "",
                "unified": 0, "uta": 1, "userID": 1000001, "inviterID": 0, "vipLevel": "No VIP",
                "mktMakerLevel": "0", "affiliateID": 0, "rsaPublicKey": "", "isMaster": True,
            }
        )

    async def account_info(self, request: Request) -> Response:
        err, _ = await self._private(request)
        if err is not None:
            return err
        return self.ok(
            {"marginMode": "REGULAR_MARGIN", "updatedTime": str(self.state.now_ms()), "unifiedMarginStatus": 6,
             "dcpStatus": "OFF", "timeWindow": 10, "smpGroup": 0, "isMasterTrader": False,
             "spotHedgingStatus": "OFF"}
        )

    async def coin_query_info(self, request: Request) -> Response:
        err, _ = await self._private(request)
        if err is not None:
            return err
        coins = ["USDT"] + sorted({m.base for m in self.state.market_objects(EXCHANGE)})
        rows = [
            {"name": c, "coin": c, "remainAmount": "1000000",
             "chains": [{"chainType": c, "confirmation": "6", "withdrawFee": "1", "depositMin": "0",
                         "withdrawMin": "1", "chain": c, "chainDeposit": "1", "chainWithdraw": "1",
                         "minAccuracy": "8", "withdrawPercentageFee": "0", "contractAddress": ""}]}
            for c in coins
        ]
        return self.ok({"rows": rows})

    async def wallet_balance(self, request: Request) -> Response:
        err, _ = await self._private(request)
        if err is not None:
            return err
        upnl = Decimal(0)
        for pos in self.state.list_positions(EXCHANGE):
            upnl += pos.unrealised_pnl(self.state.quote(EXCHANGE, pos.symbol).last)
        equity = Decimal(100000) + upnl
        return self.ok(
            {"list": [{"accountType": "UNIFIED", "totalEquity": dstr(equity), "totalWalletBalance": "100000",
                       "totalAvailableBalance": dstr(equity), "totalPerpUPL": dstr(upnl),
                       "coin": [{"coin": "USDT", "equity": dstr(equity), "walletBalance": "100000",
                                 "unrealisedPnl": dstr(upnl), "locked": "0", "borrowAmount": "0",
                                 "availableToWithdraw": "", "totalOrderIM": "0", "totalPositionIM": "0",
                                 "totalPositionMM": "0", "cumRealisedPnl": "0", "usdValue": dstr(equity)}]}]}
        )

    async def not_found(self, request: Request) -> Response:
        log.warning("simulator: bybit has no %s %s", request.method, request.url.path)
        return Response(
            f"404 page not found (simulator has no bybit {request.method} {request.url.path})".encode(),
            status_code=404,
            media_type="text/plain",
        )

    def _guard(self, fn):
        """Whatever a client sends, answer like the exchange (never a bare 500)."""

        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except Exception:
                log.exception("simulator: bybit %s %s failed", request.method, request.url.path)
                return self.error("10016")

        return endpoint

    def routes(self) -> list[BaseRoute]:
        g = self._guard
        r = [
            Route("/v5/market/time", g(self.market_time), methods=["GET"]),
            Route("/v5/market/instruments-info", g(self.instruments_info), methods=["GET"]),
            Route("/v5/market/tickers", g(self.tickers), methods=["GET"]),
            Route("/v5/market/orderbook", g(self.orderbook), methods=["GET"]),
            Route("/v5/position/list", g(self.position_list), methods=["GET"]),
            Route("/v5/order/create", g(self.order_create), methods=["POST"]),
            Route("/v5/order/cancel", g(self.order_cancel), methods=["POST"]),
            Route("/v5/order/realtime", g(self.order_realtime), methods=["GET"]),
            Route("/v5/order/history", g(self.order_history), methods=["GET"]),
            Route("/v5/execution/list", g(self.execution_list), methods=["GET"]),
            Route("/v5/user/query-api", g(self.query_api), methods=["GET"]),
            Route("/v5/account/info", g(self.account_info), methods=["GET"]),
            Route("/v5/asset/coin/query-info", g(self.coin_query_info), methods=["GET"]),
            Route("/v5/account/wallet-balance", g(self.wallet_balance), methods=["GET"]),
            Route("/{path:path}", g(self.not_found), methods=["GET", "POST", "PUT", "DELETE"]),
        ]
        return [Mount("/bybit", routes=r)]


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


def _next_funding_ms(now_ms: int) -> int:
    period = 8 * 3600 * 1000
    return (now_ms // period + 1) * period


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


def routes(state: SimState) -> list[BaseRoute]:
    return BybitAPI(state).routes()
