"""The Bybit v5 REST dialect assembled: every area's endpoints, routed under ``/bybit``."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from simulator.rest_bybit.account import BybitAccount
from simulator.rest_bybit.history import BybitHistory
from simulator.rest_bybit.market import BybitMarketData
from simulator.rest_bybit.orders import BybitOrders
from simulator.state import SimState


class BybitAPI(BybitMarketData, BybitAccount, BybitOrders, BybitHistory):
    """Bybit v5 REST over one :class:`~simulator.state.SimState`."""

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


def routes(state: SimState) -> list[BaseRoute]:
    return BybitAPI(state).routes()
