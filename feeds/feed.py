"""The feed actor: one per exchange, public ticker stream → per-symbol tick channels.

:class:`Feed` owns one WebSocket connection (trio-websocket) to an exchange's public
stream and the exchange-agnostic machinery around it; the wire format lives in a sans-IO
protocol object (:mod:`feeds.bybit`, :mod:`feeds.binance`, made by :func:`make_protocol`).
Each concern of that machinery has its own module, mixed into :class:`Feed`:

* :mod:`feeds.subscriptions` — who wants which symbol: :meth:`Feed.subscribe` /
  :meth:`Feed.unsubscribe` (synchronous, callable before or while :meth:`Feed.run`
  runs, surviving reconnects), the connection kept subscribed to what is wanted without
  reconnecting, and the fan-out to size-1 "latest tick wins" channels.
* :mod:`feeds.connection` — the WebSocket, its heartbeat, and reconnecting with jittered
  exponential backoff (:class:`supervisor.backoff.Backoff`), then resubscribing
  everything wanted.
* :mod:`feeds.delivery` — each parsed frame: ticks to subscribers, bad input (see
  :mod:`feeds.protocol`) counted in :attr:`Feed.stats` (:mod:`feeds.stats`) and logged,
  rate-limited (:mod:`supervisor.log_limiter`). It never stops the feed.
* :mod:`feeds.staleness` — a wanted symbol silent on the stream for ``stale_after``
  seconds is *stale*; the first stream update clears it.
* :mod:`feeds.rest_fallback` — while a symbol is stale it is polled with ``rest_quote``
  every ``rest_poll_interval`` seconds and those quotes are fanned out as ticks with
  ``source="rest"``.
* :mod:`feeds.suspects` — a stream tick more than ``suspect_threshold`` (20 %) away from
  the last accepted price is held by the quote guard (:mod:`feeds.guard`) until a
  second source agrees. ``suspect_threshold=None`` turns this off.

``run`` lets only cancellation out: connection failures of any kind are logged, counted
and retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

import trio

from feeds.binance import BinanceProtocol
from feeds.bybit import BybitProtocol
from feeds.connection import MESSAGE_QUEUE_SIZE, RECEIVE_BUFFER_SIZE, Connection
from feeds.delivery import Delivery
from feeds.failures import HeartbeatTimeout
from feeds.guard import DEFAULT_THRESHOLD, QuoteGuard
from feeds.protocol import ExchangeProtocol
from feeds.rest_fallback import RestFallback
from feeds.staleness import Staleness
from feeds.state import RestQuote
from feeds.stats import FeedStats
from feeds.subscriptions import Subscriptions
from feeds.suspects import Suspects
from feeds.tick import Tick
from supervisor.log_limiter import LogLimiter

__all__ = [
    "Feed",
    "FeedStats",
    "FeedTimings",
    "HeartbeatTimeout",
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BUFFER_SIZE",
    "make_protocol",
]


def make_protocol(exchange: str) -> ExchangeProtocol:
    """The stream protocol for a ccxt exchange id."""
    if exchange == "bybit":
        return BybitProtocol(exchange)
    if exchange in ("binanceusdm", "binance"):
        return BinanceProtocol(exchange)
    raise ValueError(f"no stream protocol for exchange {exchange!r}")


@dataclass(frozen=True)
class FeedTimings:
    """How a feed paces itself (seconds), with the service's defaults.

    ``stale_after`` — a wanted symbol silent on the stream this long is stale and
    polled over REST every ``rest_poll_interval``. ``heartbeat_interval`` — a ping
    this often; ``reconnect_initial``/``reconnect_max`` bound the jittered backoff
    between connection attempts; ``connect_timeout``/``rest_timeout`` bound one
    connection attempt and one REST quote. ``suspect_threshold`` — the relative jump
    the quote guard holds until a second source agrees (``None``: no guard).
    """

    stale_after: float = 10.0
    rest_poll_interval: float = 2.0
    heartbeat_interval: float = 20.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    connect_timeout: float = 10.0
    rest_timeout: float = 10.0
    suspect_threshold: Decimal | str | float | None = DEFAULT_THRESHOLD


class Feed(Connection, Delivery, Subscriptions, Staleness, RestFallback, Suspects):
    """Market-data feed actor for one exchange. See the module docstring.

    ``timings`` (:class:`FeedTimings`) paces it; each value is copied to an attribute
    of the same name, which tests may change on a running feed.
    """

    def __init__(
        self,
        exchange: str,
        ws_url: str,
        *,
        rest_quote: RestQuote | None = None,
        timings: FeedTimings = FeedTimings(),
        logger: logging.Logger | None = None,
        protocol: ExchangeProtocol | None = None,
    ):
        self.exchange = exchange
        self.ws_url = ws_url
        self.protocol = protocol if protocol is not None else make_protocol(exchange)
        self.rest_quote = rest_quote
        self.timings = timings
        self.stale_after = timings.stale_after
        self.rest_poll_interval = timings.rest_poll_interval
        self.heartbeat_interval = timings.heartbeat_interval
        self.reconnect_initial = timings.reconnect_initial
        self.reconnect_max = timings.reconnect_max
        self.connect_timeout = timings.connect_timeout
        self.rest_timeout = timings.rest_timeout
        self.log = logger if logger is not None else logging.getLogger(f"feeds.{exchange}")
        self.stats = FeedStats()
        self.guard = QuoteGuard(timings.suspect_threshold)

        self._init_subscriptions()
        self._init_staleness()
        self._init_rest_fallback()
        self._init_suspects()
        self._nursery: trio.Nursery | None = None  # run's, while it runs: for the REST tasks
        self._init_connection()
        self._limiter = LogLimiter()

    def latest(self, symbol: str) -> Tick | None:
        """The newest tick of ``symbol`` (stream or REST), if any."""
        return self._latest.get(symbol)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, stream, reconnect, forever. Only cancellation gets out."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self._stale_watcher)
                task_status.started()
                await self._connection_loop()
            finally:
                self._nursery = None
                for scope in [*self._pollers.values(), *self._checkers.values()]:
                    scope.cancel()
                self._pollers.clear()
                self._checkers.clear()
                self._stale.clear()
                self._live.clear()
                self.stats.connected = False
                if self._connected.is_set():
                    self._connected = trio.Event()
