"""The Binance USD-M REST dialect assembled: every area's endpoints, routed under ``/binance``."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from simulator.rest_binance.account import BinanceAccount
from simulator.rest_binance.history import BinanceHistory
from simulator.rest_binance.market import BinanceMarketData
from simulator.rest_binance.orders import BinanceOrders
from simulator.rest_binance.user_stream import BinanceUserStream
from simulator.state import SimState


class BinanceAPI(BinanceMarketData, BinanceAccount, BinanceOrders, BinanceHistory, BinanceUserStream):
    """Binance USD-M REST over one :class:`~simulator.state.SimState`."""

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
            Route("/fapi/v1/listenKey", g(self.listen_key_open), methods=["POST"]),
            Route("/fapi/v1/listenKey", g(self.listen_key_keepalive), methods=["PUT"]),
            Route("/fapi/v1/listenKey", g(self.listen_key_close), methods=["DELETE"]),
            Route("/{path:path}", g(self.not_found), methods=["GET", "POST", "PUT", "DELETE"]),
        ]
        return [Mount("/binance", routes=r)]


def routes(state: SimState) -> list[BaseRoute]:
    return BinanceAPI(state).routes()
