"""Bybit v5 account: the position list and the account probes ccxt makes on its own.

``GET /v5/position/list``: its ``createdTime`` is when a position was first ever created
on the symbol, ``updatedTime`` the last change, and ``openTime`` follows the
``position_open_time`` setting (see :mod:`simulator.admin`); the position faults (a
left-out or malformed row) apply here. The probes: ``/v5/user/query-api``,
``/v5/account/info``, ``/v5/asset/coin/query-info``, ``/v5/account/wallet-balance``.
"""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from simulator.rest_bybit.envelope import EXCHANGE, BybitEnvelope
from simulator.state import Market, dstr, dt_ms


class BybitAccount(BybitEnvelope):
    """The position list and the account probes."""

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
