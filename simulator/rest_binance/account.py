"""Binance USD-M account: leverage brackets, position risk (v2 and v3), position mode.

``GET /fapi/v1/leverageBracket``, ``/fapi/v2/positionRisk``, ``/fapi/v3/positionRisk``,
``/fapi/v1/positionSide/dual``. A position's ``updateTime`` is its last fill; Binance
reports no opening time. The position faults (a left-out or malformed row) apply here.
"""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import json_response
from simulator.rest_binance.envelope import EXCHANGE, BinanceEnvelope
from simulator.state import Market, dstr, dt_ms


class BinanceAccount(BinanceEnvelope):
    """The account and position endpoints."""

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
