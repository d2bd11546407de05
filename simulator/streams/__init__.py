"""The simulator's WebSocket streams: public tickers and private account streams (Bybit v5 linear, Binance USD-M).

Served by starlette under hypercorn (trio). Routes (see :func:`websocket_routes`):

* ``/bybit/v5/public/linear`` — Bybit v5 public linear: ``{"op":"subscribe",
  "req_id":..,"args":["tickers.BTCUSDT"]}`` → ack ``{"success":true,"ret_msg":"",
  "conn_id":..,"req_id":..,"op":"subscribe"}`` then a ``snapshot`` per topic, then a
  ``delta`` with only the changed fields on every price change; ``unsubscribe``
  likewise; ``{"op":"ping"}`` → ``{"success":true,"ret_msg":"pong",..,"op":"ping"}``.
  A bad topic → ``{"success":false,"ret_msg":"error:handler not found,topic:..",..}``.
* ``/binance/ws`` (raw streams, live ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS``/
  ``SET_PROPERTY``/``GET_PROPERTY``), ``/binance/ws/<stream>`` and
  ``/binance/stream?streams=a@bookTicker/b@aggTrade`` (combined: every payload wrapped as
  ``{"stream":..,"data":..}``; live SUBSCRIBE works there too). Streams:
  ``<symbol>@bookTicker`` (on every book update) and ``<symbol>@aggTrade`` (when the
  last price changes). Errors: ``{"error":{"code":2,"msg":"Invalid request: .."},"id":..}``.
  Protocol-level pings are answered by hypercorn.

* Private (account) streams, :mod:`~simulator.streams.private`: ``/binance/ws/<listenKey>``
  (Binance's user data stream for a live listen key: ``ORDER_TRADE_UPDATE``,
  ``ACCOUNT_UPDATE``, ``listenKeyExpired``) and ``/bybit/v5/private`` (``auth``,
  ``subscribe`` to ``order``/``execution``/``position``, ``ping``), fed by every
  account change (:mod:`simulator.state.activity`).

Deliberate simplifications: a Binance subscription gets the current book at once (a busy
real market sends one within milliseconds; a quiet simulated one must not look dead);
quantities are fixed; Bybit deltas carry only price fields.

Back-pressure: each connection keeps at most one pending update per subscribed symbol
(newer prices overwrite older unsent ones) plus a bounded queue of control replies, so a
slow client costs bounded memory and, when it catches up, gets the latest prices.

Fault hooks (:class:`StreamHub`): :meth:`~StreamHub.drop_all` ends connections at once
(the server closes them with code 1011, no goodbye), :meth:`~StreamHub.silence` keeps
them open but sends nothing — no data, no acks, no Bybit pongs — until resumed, and
:meth:`~StreamHub.send_raw` pushes an arbitrary text frame (tests of malformed input).

Modules: :mod:`~simulator.streams.private` (the private connections and their faults),
:mod:`~simulator.streams.private_binance` and :mod:`~simulator.streams.private_bybit`
(their messages), :mod:`~simulator.streams.connection` (one client connection and its queues),
:mod:`~simulator.streams.hub` (the registry, the price fan-out, the fault switches and
the serving loop), :mod:`~simulator.streams.bybit` and :mod:`~simulator.streams.binance`
(each exchange's wire protocol), :mod:`~simulator.streams.routes` (the URLs).
"""

from simulator.streams.connection import EXCHANGES
from simulator.streams.hub import StreamHub
from simulator.streams.routes import websocket_routes

__all__ = ["StreamHub", "websocket_routes", "EXCHANGES"]
