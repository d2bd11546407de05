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

User data stream (USER_STREAM: the ``X-MBX-APIKEY`` header, no signature): ``POST|PUT|
DELETE /fapi/v1/listenKey`` (:mod:`~simulator.rest_binance.user_stream`).

Errors are ``{"code": -NNNN, "msg": "..."}`` with HTTP 400 (401 for key errors), like
the real API. Faults apply to signed requests only.

``POST /fapi/v1/order`` answers per ``newOrderRespType``: ``RESULT`` (what ccxt sends)
gives the order's state after matching (``FILLED``, or ``EXPIRED`` for an IOC/market
remainder); ``ACK`` (the API default) gives ``NEW`` with nothing executed. The
``binance_market_new`` fault answers MARKET orders ``NEW`` even under ``RESULT``, as the
real exchange often does; the fill is done either way and ``GET /fapi/v1/order`` shows it.

One module per area: :mod:`~simulator.rest_binance.envelope` (errors, signing, faults),
:mod:`~simulator.rest_binance.market`, :mod:`~simulator.rest_binance.account`,
:mod:`~simulator.rest_binance.orders`, :mod:`~simulator.rest_binance.history`, put
together in :mod:`~simulator.rest_binance.api`.
"""

from simulator.rest_binance.api import BinanceAPI, routes
from simulator.rest_binance.envelope import EXCHANGE

__all__ = ["EXCHANGE", "BinanceAPI", "routes"]
