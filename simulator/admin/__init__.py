"""The simulator's admin API (JSON, under ``/_sim``).

* ``GET /_sim/info`` — REST, public WebSocket and private WebSocket URLs per exchange.
* ``GET /_sim/orders`` (``?exchange=``) — every order received, in arrival order, each
  with the ``"api_key"`` its request was signed with (several clients of one account,
  one key each, tell their orders apart by it; ``SimState.orders_by_key`` groups them);
  ``DELETE /_sim/orders`` forgets them.
* ``GET /_sim/positions`` (``?exchange=``); ``POST /_sim/positions``
  ``{"exchange","symbol","side":"long"|"short","qty","entry_price","opened_at"?,"at"?,
  "fill_price"?}`` makes the position so through the fill that would (an unknown symbol
  becomes a new market priced at ``entry_price``), see
  :meth:`~simulator.state.SimState.admin_set_position`: flat → an opening fill at
  ``opened_at`` (default now; backdating makes an aged position whose fill history
  agrees); same side, more → averaging in (one fill at the tick-grid price that makes
  the new average; the opening time stays); same side, less → a reducing fill at
  ``fill_price`` (default the touch); the other side → a flip through zero at
  ``entry_price`` (the new episode opens then). ``at`` times a change to an open
  position. Answers the position plus ``"first_opened_at"`` and the ``"fills"`` made.
  ``DELETE /_sim/positions`` (``?exchange=&symbol=&price=``) closes with a fill at
  ``price`` (default the touch); without a symbol it closes them all.
* ``GET /_sim/fills`` (``?exchange=&symbol=``) — the fill history, in order;
  ``POST /_sim/fills`` ``{"exchange","symbol","side":"buy"|"sell","qty","price",
  "time"?,"order_id"?,"client_order_id"?}`` applies one fill; ``DELETE /_sim/fills``
  (``?exchange=&symbol=``) forgets the history of flat symbols.
* ``GET /_sim/settings``; ``POST /_sim/settings`` ``{"exchange","position_open_time":
  "zero"|"real"|"absent"}`` — what Bybit's position list says in ``openTime``: "0"
  (the default: unknown), the current episode's opening, or no field (Binance: "absent"
  only).
* ``GET /_sim/prices``; ``POST /_sim/prices`` ``{"exchange","symbol","bid"?,"ask"?,
  "last"?}`` sets and holds a price, ``{"exchange","symbol","release": true}`` resumes
  the walk; ``"volatility"``, ``"drift"``, ``"spread_bps"`` tune the walk.
* ``POST /_sim/step`` ``{"n": 1}`` — advance the random walk by hand.
* ``GET|POST|DELETE /_sim/faults`` — see :func:`apply_faults`. The private (account)
  streams: ``{"private_ws": "drop"|"silence"|"resume", "exchange"?}`` ends them at once
  (1011, no goodbye) or keeps them open sending nothing (no data, no replies, no pongs;
  account messages of that time are lost to them); ``{"private_raw": "<text>",
  "exchange"?}`` pushes a frame verbatim; ``{"expire_listen_key": true}`` expires the
  Binance listen keys now (their streams get ``listenKeyExpired``; ``PUT`` answers
  -1125); ``{"bybit_auth_fail": N}`` makes the next N Bybit ``auth`` requests answer the
  documented failure. ``DELETE`` clears every fault and resumes silenced streams.
* ``GET /_sim/latency``; ``POST /_sim/latency`` ``{"rest_ms": 20}`` — every REST request
  of both exchanges waits that long before it is answered (0..10000; 400 otherwise).
  The wait comes *before* the request takes effect (:class:`simulator.app.RestLatency`
  delays the request, not the reply): an order sent with ``rest_ms`` N reaches the
  order log N ms after it was sent, and its reply follows at once. So a client never
  sees its order in the simulator's state while the request is still on its way; the
  delay models a slow network to the exchange, not a slow reply from it.
* ``GET /_sim/mode``; ``POST /_sim/mode`` ``{"exchange", "hedge": true|false}`` — the
  account's position mode: hedge mode shows positions as Binance ``positionSide``
  LONG/SHORT and Bybit ``positionIdx`` 1/2, and Binance's ``/fapi/v1/positionSide/dual``
  says so.
* ``POST /_sim/reset`` — forget positions, fills, orders, faults and settings (the REST
  latency back to 0).

Every change to a position (``/_sim/positions``, ``/_sim/fills``, ``close_position``)
reaches the private streams like a real fill: as a filled MARKET order of a "trading
bot" (not reduce-only) and the position after it (:mod:`simulator.streams.private`).

Bad input answers HTTP 400 ``{"error": "..."}``; nothing a client sends crashes the
server.

Modules: :mod:`~simulator.admin.validation` (reading a request body, bad input),
:mod:`~simulator.admin.faults` (``/_sim/faults``), :mod:`~simulator.admin.api` (the
endpoints and their routes).
"""

from simulator.admin.api import AdminAPI, info_for, routes
from simulator.admin.faults import apply_faults
from simulator.admin.validation import BadInput

__all__ = ["AdminAPI", "BadInput", "apply_faults", "info_for", "routes"]
