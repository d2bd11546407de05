"""What the parts of :class:`feeds.feed.Feed` share: one declaration, checked by mypy.

:class:`~feeds.feed.Feed` is assembled from mixins, one per concern
(:mod:`feeds.connection`, :mod:`feeds.subscriptions`, :mod:`feeds.delivery`,
:mod:`feeds.staleness`, :mod:`feeds.rest_fallback`, :mod:`feeds.suspects`). Each works
on state the others set and calls methods the others define: the connection's reader
hands frames to the delivery, the delivery asks the staleness watch and the suspect
handling, and so on. :class:`FeedState` is their common base class. It declares

* the feed's settings and collaborators, set by :meth:`feeds.feed.Feed.__init__`;
* each part's state, set by that part's ``_init_*`` method;
* the methods one part calls on another (for the type checker only: at run time the
  mixin that defines a method is the only place it exists).

It adds no behaviour. A new attribute or cross-part call is declared here first; mypy
then checks every use of it in every part.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from decimal import Decimal
from typing import TYPE_CHECKING

import trio

from exchanges.port import Quote
from feeds.guard import QuoteGuard
from feeds.parse_results import ParseResult
from feeds.protocol import ExchangeProtocol
from feeds.stats import FeedStats
from feeds.tick import Tick, TickSink
from supervisor.log_limiter import LogLimiter

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

__all__ = ["FeedState", "RestPrices", "RestQuote", "Subscribers"]

#: async (unified symbol) -> the symbol's quote over REST
RestQuote = Callable[[str], Awaitable[Quote]]

#: one symbol's subscribers: the handle each subscriber unsubscribes with → where its ticks go
Subscribers = dict[Hashable, TickSink]

#: (bid, ask, last) of a usable REST quote
RestPrices = tuple[Decimal | None, Decimal | None, Decimal | None]


class FeedState:
    """The attributes and cross-part methods of :class:`feeds.feed.Feed`. See the module docstring."""

    # -- settings and collaborators (Feed.__init__) ---------------------------------------
    exchange: str
    ws_url: str
    protocol: ExchangeProtocol
    rest_quote: RestQuote | None
    stale_after: float
    rest_poll_interval: float
    heartbeat_interval: float
    reconnect_initial: float
    reconnect_max: float
    connect_timeout: float
    rest_timeout: float
    log: logging.Logger
    stats: FeedStats
    guard: QuoteGuard
    _limiter: LogLimiter
    _nursery: trio.Nursery | None  # run's, while it runs: for the REST tasks

    # -- connection ------------------------------------------------------------------------
    _connected: trio.Event
    _last_rx: float
    _session_was_healthy: bool

    # -- subscriptions ---------------------------------------------------------------------
    _subs: dict[str, Subscribers]
    _wanted_since: dict[str, float | None]
    _latest: dict[str, Tick]
    _live: set[str]
    _solo: set[str]
    _changed: trio.Event

    # -- staleness, REST fallback, suspects ------------------------------------------------
    _stale: set[str]
    _pollers: dict[str, trio.CancelScope]
    _checkers: dict[str, trio.CancelScope]
    _last_check: dict[str, float]
    _rest_failing: set[str]

    if TYPE_CHECKING:
        # delivery
        def _on_tick(self, tick: Tick, t: float) -> None: ...
        def _on_event(self, result: ParseResult, t: float) -> None: ...
        def _deliver(self, symbol: str, subs: Subscribers, tick: Tick, t: float) -> None: ...

        # subscriptions
        def unsubscribe(self, symbol: str, receiver: Hashable) -> None: ...
        def _fan_out(self, symbol: str, subs: Subscribers, tick: Tick) -> None: ...
        def _subscribe_refused(self, symbols: tuple[str, ...]) -> None: ...
        async def _sync_subscriptions(self, ws: WebSocketConnection) -> None: ...

        # staleness
        async def _stale_watcher(self) -> None: ...
        def _recovered(self, symbol: str, t: float) -> None: ...

        # REST fallback
        def _start_rest_polling(self, symbol: str) -> None: ...
        def _stop_rest_polling(self, symbol: str) -> None: ...
        def _rest_prices(self, symbol: str, quote: Quote) -> RestPrices | None: ...

        # suspects
        def _stream_vouches(self, symbol: str) -> bool: ...
        def _sync_guard_stats(self) -> None: ...
        def _on_suspect(self, tick: Tick) -> None: ...
        def _on_confirmed(self, tick: Tick, source: str) -> None: ...
