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

One module per area: :mod:`~simulator.rest_bybit.envelope` (answers, signing, faults),
:mod:`~simulator.rest_bybit.market`, :mod:`~simulator.rest_bybit.account`,
:mod:`~simulator.rest_bybit.orders`, :mod:`~simulator.rest_bybit.history`, put together
in :mod:`~simulator.rest_bybit.api`.
"""

from simulator.rest_bybit.api import BybitAPI, routes
from simulator.rest_bybit.envelope import EXCHANGE

__all__ = ["EXCHANGE", "BybitAPI", "routes"]
