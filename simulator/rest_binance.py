"""Binance USD-M futures REST, enough for ccxt's real ``binanceusdm`` client.

Mounted under ``/binance``: rewrite ``https://fapi.binance.com`` to
``http://HOST:PORT/binance`` in every ``urls['api']`` entry of a ccxt client.

Public: ``GET /fapi/v1/ping``, ``/fapi/v1/time``, ``/fapi/v1/exchangeInfo``,
``/fapi/v1/ticker/bookTicker``, ``/fapi/v1/ticker/24hr``, ``/fapi/v1/ticker/price``
(and v2), ``/fapi/v1/premiumIndex``, ``/fapi/v1/depth``.

Signed (``timestamp``, ``recvWindow``, ``signature`` = hex HMAC-SHA256(secret,
totalParams) where totalParams is the query string followed by the form body, minus
the signature; header ``X-MBX-APIKEY``): ``GET /fapi/v1/leverageBracket``,
``/fapi/v2/positionRisk``, ``/fapi/v3/positionRisk``, ``POST|GET|DELETE
/fapi/v1/order``, ``GET /fapi/v1/openOrders``, ``/fapi/v1/allOrders``,
``/fapi/v1/userTrades`` (the fill history), ``/fapi/v1/positionSide/dual``. A position's
``updateTime`` is its last fill; Binance reports no opening time.

Errors are ``{"code": -NNNN, "msg": "..."}`` with HTTP 400 (401 for key errors), like
the real API. Faults apply to signed requests only.

``POST /fapi/v1/order`` answers per ``newOrderRespType``: ``RESULT`` (what ccxt sends)
gives the order's state after matching (``FILLED``, or ``EXPIRED`` for an IOC/market
remainder); ``ACK`` (the API default) gives ``NEW`` with nothing executed. The
``binance_market_new`` fault answers MARKET orders ``NEW`` even under ``RESULT``, as the
real exchange often does; the fill is done either way and ``GET /fapi/v1/order`` shows it.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import logging
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from simulator.rest_bybit import NoReply, hold_until_disconnect, json_response, service_unavailable
from simulator.state import Fill, Market, Order, SimError, SimState, dstr, dt_ms, to_decimal

log = logging.getLogger(__name__)

EXCHANGE = "binanceusdm"
TAKER_FEE = Decimal("0.0005")
WINDOW_MS = 7 * 86_400_000  # userTrades: "cannot be longer than 7 days"
RETENTION_MS = 183 * 86_400_000  # userTrades: "Only support querying trade in the past 6 months"
CLIENT_ID_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")

MESSAGES = {
    "-1003": "Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute. "
    "Please use WebSocket Streams for live updates to avoid polling the API.",
    "-1021": "Timestamp for this request is outside of the recvWindow.",
    "-1022": "Signature for this request is not valid.",
    "-1023": "Start time is greater than end time.",
    "-1102": "A mandatory parameter was not sent, was empty/null, or malformed.",
    "-1111": "Precision is over the maximum defined for this asset.",
    "-1116": "Invalid orderType.",
    "-1117": "Invalid side.",
    "-1121": "Invalid symbol.",
    "-2010": "NEW_ORDER_REJECTED",
    "-2011": "Unknown order sent.",
    "-2013": "Order does not exist.",
    "-2014": "API-key format invalid.",
    "-2015": "Invalid API-key, IP, or permissions for action.",
    "-2019": "Margin is insufficient.",
    "-2022": "ReduceOnly Order is rejected.",
    "-4003": "Quantity less than or equal to zero.",
    "-4005": "Quantity greater than max quantity.",
    "-4014": "Price not increased by tick size.",
    "-4061": "Order's position side does not match user's setting.",
    "-4116": "ClientOrderId is duplicated.",
    "-4164": "Order's notional must be no smaller than 5 (unless you choose reduce only).",
    "-2020": "Unable to fill.",
    "-4131": "The counterparty's best price does not meet the PERCENT_PRICE filter limit.",
    "-5021": "Due to the order could not be filled immediately, the FOK order has been rejected.",
    "-1000": "An unknown error occured while processing the request.",
    "-1001": "Internal error; unable to process your request. Please try again.",
}


def _illegal(name: str) -> str:
    return f"Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'."


def _mandatory(name: str) -> str:
    return f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."


class _Reject(Exception):
    def __init__(self, code: str, message: str | None = None):
        super().__init__(message)
        self.code = str(code)
        self.message = message or MESSAGES.get(self.code, "simulated rejection")


class BinanceAPI:
    def __init__(self, state: SimState):
        self.state = state

    # -------------------------------------------------------------- envelope

    def error(self, code, message: str | None = None, status: int | None = None) -> Response:
        code = str(code)
        if status is None:
            status = 401 if code in ("-2014", "-2015") else 400
        body = {"code": int(code), "msg": message or MESSAGES.get(code, "simulated error")}
        return json_response(body, status=status)

    # ------------------------------------------------------------------ auth

    async def _signed(self, request: Request) -> tuple[Response | None, dict]:
        st = self.state
        if st.faults.take_http_5xx(EXCHANGE):
            return service_unavailable(), {}
        if st.faults.take_rate_limit(EXCHANGE):
            body = {"code": -1003, "msg": MESSAGES["-1003"]}
            return json_response(body, status=429, headers={"Retry-After": "1"}), {}
        key = request.headers.get("x-mbx-apikey")
        if not key:
            return self.error("-2014"), {}
        if key not in st.api_keys:
            return self.error("-2015"), {}
        qs = request.scope.get("query_string", b"").decode("latin-1")
        body = (await request.body()).decode("latin-1") if request.method in ("POST", "PUT", "DELETE") else ""
        params: dict[str, str] = {}
        for part in (qs, body):
            params.update(parse_qsl(part, keep_blank_values=True))
        sig = params.pop("signature", None)
        if not sig:
            return self.error("-1102", _mandatory("signature")), {}
        ts = params.get("timestamp")
        if not ts:
            return self.error("-1102", _mandatory("timestamp")), {}
        try:
            ts_i = int(ts)
            recv = int(params.get("recvWindow", "5000"))
        except ValueError:
            return self.error("-1102", _mandatory("timestamp")), {}
        now = st.now_ms()
        if ts_i >= now + 1000 or now - ts_i > recv:
            return self.error("-1021"), {}
        total = _strip_signature(qs) + _strip_signature(body)
        expected = hmac.new(st.api_keys[key].encode(), total.encode("latin-1"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig.lower()):
            return self.error("-1022"), {}
        return None, params

    # ---------------------------------------------------------------- public

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
            "triggerProtect": "0.0500",
            "liquidationFee": "0.012500",
            "marketTakeBound": "0.05",
            "maxMoveOrderLimit": 10000,
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
            "permissionSet": ["GRID", "COPY"],
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
                "futuresType": "U_MARGINED",
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
            "lastUpdateId": self.state.steps,
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
            return self.error("-1102", _mandatory("limit"))
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

    # --------------------------------------------------------------- signed

    async def leverage_bracket(self, request: Request) -> Response:
        err, p = await self._signed(request)
        if err is not None:
            return err

        def row(m: Market) -> dict:
            return {
                "symbol": m.symbol_id,
                "notionalCoef": 1.0,
                "brackets": [
                    {"bracket": 1, "initialLeverage": 125, "notionalCap": 50000, "notionalFloor": 0,
                     "maintMarginRatio": 0.004, "cum": 0.0},
                    {"bracket": 2, "initialLeverage": 100, "notionalCap": 600000, "notionalFloor": 50000,
                     "maintMarginRatio": 0.005, "cum": 50.0},
                    {"bracket": 3, "initialLeverage": 50, "notionalCap": 10000000, "notionalFloor": 600000,
                     "maintMarginRatio": 0.01, "cum": 3050.0},
                ],
            }

        symbol = p.get("symbol")
        if symbol:
            m = self.state.get_market(EXCHANGE, symbol.upper())
            if m is None:
                return self.error("-1121")
            return json_response(row(m))
        return json_response([row(m) for m in self.state.market_objects(EXCHANGE)])

    def _risk_row(self, m: Market, v3: bool) -> dict:
        st = self.state
        pos = st.position(EXCHANGE, m.symbol_id)
        mark = st.quote(EXCHANGE, m.symbol_id).last
        if pos is None:
            amt = Decimal(0)
            entry = Decimal(0)
            upnl = Decimal(0)
            updated = 0
        else:
            amt = pos.signed_qty
            entry = pos.entry_price
            upnl = pos.unrealised_pnl(mark)
            updated = dt_ms(pos.updated_at)
        position_side = "BOTH"
        if st.hedge_mode[EXCHANGE] and pos is not None:
            position_side = "LONG" if pos.side == "long" else "SHORT"
        notional = amt * mark
        im = abs(notional) / 10
        mm = abs(notional) * Decimal("0.004")
        q8 = Decimal("0.00000001")
        if v3:
            return {
                "symbol": m.symbol_id,
                "positionSide": position_side,
                "positionAmt": m.fmt_qty(amt),
                "entryPrice": dstr(entry) if pos else "0.0",
                "breakEvenPrice": dstr(entry) if pos else "0.0",
                "markPrice": dstr(mark),
                "unRealizedProfit": dstr(upnl.quantize(q8)),
                "liquidationPrice": "0",
                "isolatedMargin": "0",
                "notional": dstr(notional.quantize(q8)),
                "marginAsset": "USDT",
                "isolatedWallet": "0",
                "initialMargin": dstr(im.quantize(q8)),
                "maintMargin": dstr(mm.quantize(q8)),
                "positionInitialMargin": dstr(im.quantize(q8)),
                "openOrderInitialMargin": "0",
                "adl": 2 if pos else 0,
                "bidNotional": "0",
                "askNotional": "0",
                "updateTime": updated,
            }
        return {
            "entryPrice": dstr(entry) if pos else "0.0",
            "breakEvenPrice": dstr(entry) if pos else "0.0",
            "marginType": "cross",
            "isAutoAddMargin": "false",
            "isolatedMargin": "0.00000000",
            "leverage": "10",
            "liquidationPrice": "0",
            "markPrice": dstr(mark),
            "maxNotionalValue": "20000000",
            "positionAmt": m.fmt_qty(amt),
            "notional": dstr(notional.quantize(q8)),
            "isolatedWallet": "0",
            "symbol": m.symbol_id,
            "unRealizedProfit": dstr(upnl.quantize(q8)),
            "positionSide": position_side,
            "updateTime": updated,
        }

    async def _position_risk(self, request: Request, v3: bool) -> Response:
        err, p = await self._signed(request)
        if err is not None:
            return err
        symbol = p.get("symbol")
        if symbol:
            m = self.state.get_market(EXCHANGE, symbol.upper())
            if m is None:
                return self.error("-1121")
            markets = [m]
        else:
            markets = self.state.market_objects(EXCHANGE)
        rows = []
        for m in markets:
            has = self.state.position(EXCHANGE, m.symbol_id) is not None
            if v3 and not has:  # v3 lists only symbols with a position (or open orders)
                continue
            if not symbol and has and self.state.faults.take_omission(EXCHANGE, m.symbol_id):
                continue
            rows.append(self.state.faults.override_row(EXCHANGE, m.symbol_id, self._risk_row(m, v3)))
        return json_response(rows)

    async def position_risk_v2(self, request: Request) -> Response:
        return await self._position_risk(request, v3=False)

    async def position_risk_v3(self, request: Request) -> Response:
        return await self._position_risk(request, v3=True)

    async def dual_side(self, request: Request) -> Response:
        err, _ = await self._signed(request)
        if err is not None:
            return err
        return json_response({"dualSidePosition": self.state.hedge_mode[EXCHANGE]})

    # -- orders

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
        if with_time:
            row["time"] = dt_ms(o.time)
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
            raise _Reject("-1102", _mandatory("symbol"))
        out["symbol"] = symbol
        m = self.state.get_market(EXCHANGE, symbol)
        if m is None:
            raise _Reject("-1121")
        side = p.get("side")
        if side not in ("BUY", "SELL"):
            raise _Reject("-1117") if side else _Reject("-1102", _mandatory("side"))
        out["side"] = side.lower()
        otype = p.get("type")
        if otype not in ("MARKET", "LIMIT"):
            raise _Reject("-1116") if otype else _Reject("-1102", _mandatory("type"))
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
            raise _Reject("-1102", _mandatory("quantity"))
        try:
            qty = to_decimal(raw_qty, "quantity")
        except SimError:
            raise _Reject("-1100", _illegal("quantity")) from None
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
                raise _Reject("-1102", _mandatory("timeInForce"))
            if tif not in ("GTC", "IOC", "FOK", "GTX"):
                raise _Reject("-1115", "Invalid timeInForce.")
            out["tif"] = tif
            raw_price = p.get("price")
            if not raw_price:
                raise _Reject("-1102", _mandatory("price"))
            try:
                price = to_decimal(raw_price, "price")
            except SimError:
                raise _Reject("-1100", _illegal("price")) from None
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
        response = self._order_new(p)
        if drop:
            log.info("simulator: binance order reply dropped (fault)")
            await hold_until_disconnect(request)
            return NoReply()
        return response

    def _order_new(self, p: dict) -> Response:
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
        )
        resp_type = p.get("newOrderRespType", "ACK")
        as_new = resp_type != "RESULT" or (o.type == "market" and st.faults.binance_market_new)
        return json_response(self._order_row(o, with_time=False, as_new=as_new))

    def _lookup(self, p: dict) -> tuple[Order | None, Response | None]:
        symbol = (p.get("symbol") or "").upper()
        if not symbol:
            return None, self.error("-1102", _mandatory("symbol"))
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
            return self.error("-1102", _mandatory("symbol"))
        if self.state.get_market(EXCHANGE, symbol) is None:
            return self.error("-1121")
        try:
            limit = max(1, min(int(p.get("limit", "500")), 1000))
        except ValueError:
            return self.error("-1102", _mandatory("limit"))
        orders = [o for o in self.state.accepted_orders(EXCHANGE) if o.symbol == symbol]
        if p.get("orderId"):
            try:
                start_id = int(p["orderId"])
            except ValueError:
                return self.error("-1102", _mandatory("orderId"))
            orders = [o for o in orders if int(o.order_id) >= start_id]
        return json_response([self._order_row(o) for o in orders[-limit:]])

    # -- fills

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
            return self.error("-1102", _mandatory("symbol"))
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
        if start is None and end is None:
            start, end = now - WINDOW_MS, now
        elif start is None:
            start = end - WINDOW_MS
        elif end is None:
            end = start + WINDOW_MS
        if start > end:
            return self.error("-1023", "Start time is greater than end time.")
        if end - start > WINDOW_MS:
            return self.error("-1127", "More than 168 hours between startTime and endTime.")
        fills = [f for f in fills if start <= dt_ms(f.time) <= end]
        page = fills[-limit:] if most_recent else fills[:limit]
        return json_response([self._trade_row(f) for f in page])

    async def not_found(self, request: Request) -> Response:
        log.warning("simulator: binance has no %s %s", request.method, request.url.path)
        return Response(
            f"404 Not Found (simulator has no binance {request.method} {request.url.path})".encode(),
            status_code=404,
            media_type="text/plain",
        )

    def _guard(self, fn):
        """Whatever a client sends, answer like the exchange (never a bare 500)."""

        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except Exception:
                log.exception("simulator: binance %s %s failed", request.method, request.url.path)
                return self.error("-1000", status=500)

        return endpoint

    def routes(self) -> list[BaseRoute]:
        g = self._guard
        r = [
            Route("/fapi/v1/ping", g(self.ping), methods=["GET"]),
            Route("/fapi/v1/time", g(self.server_time), methods=["GET"]),
            Route("/fapi/v1/exchangeInfo", g(self.exchange_info), methods=["GET"]),
            Route("/fapi/v1/ticker/bookTicker", g(self.book_ticker), methods=["GET"]),
            Route("/fapi/v1/ticker/24hr", g(self.ticker_24hr), methods=["GET"]),
            Route("/fapi/v1/ticker/price", g(self.ticker_price), methods=["GET"]),
            Route("/fapi/v2/ticker/price", g(self.ticker_price), methods=["GET"]),
            Route("/fapi/v1/premiumIndex", g(self.premium_index), methods=["GET"]),
            Route("/fapi/v1/depth", g(self.depth), methods=["GET"]),
            Route("/fapi/v1/leverageBracket", g(self.leverage_bracket), methods=["GET"]),
            Route("/fapi/v2/positionRisk", g(self.position_risk_v2), methods=["GET"]),
            Route("/fapi/v3/positionRisk", g(self.position_risk_v3), methods=["GET"]),
            Route("/fapi/v1/positionSide/dual", g(self.dual_side), methods=["GET"]),
            Route("/fapi/v1/order", g(self.order_new), methods=["POST"]),
            Route("/fapi/v1/order", g(self.order_get), methods=["GET"]),
            Route("/fapi/v1/order", g(self.order_cancel), methods=["DELETE"]),
            Route("/fapi/v1/openOrders", g(self.open_orders), methods=["GET"]),
            Route("/fapi/v1/allOrders", g(self.all_orders), methods=["GET"]),
            Route("/fapi/v1/userTrades", g(self.user_trades), methods=["GET"]),
            Route("/{path:path}", g(self.not_found), methods=["GET", "POST", "PUT", "DELETE"]),
        ]
        return [Mount("/binance", routes=r)]


def _strip_signature(raw: str) -> str:
    if "signature=" not in raw:
        return raw
    return "&".join(part for part in raw.split("&") if not part.startswith("signature="))


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


def routes(state: SimState) -> list[BaseRoute]:
    return BinanceAPI(state).routes()
