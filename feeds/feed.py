"""The feed actor: one per exchange, public ticker stream → per-symbol tick channels.

:class:`Feed` owns one WebSocket connection (trio-websocket) to an exchange's public
stream and the exchange-agnostic machinery around it; the wire format lives in a sans-IO
protocol object (:mod:`feeds.bybit`, :mod:`feeds.binance`).

* **Subscriptions** live in the :class:`Feed` object, not in the connection:
  :meth:`Feed.subscribe` / :meth:`Feed.unsubscribe` are synchronous, may be called before
  or while :meth:`Feed.run` runs, and survive reconnects and restarts of ``run``. The
  first subscriber of a symbol makes the connection subscribe it, the last one leaving
  unsubscribes it — on the live connection, without reconnecting. Bursts of changes are
  coalesced into few requests and paced to respect exchange rate limits. If the
  exchange refuses a batch (one unknown symbol can sink a whole Binance SUBSCRIBE), its
  symbols are retried one per request; a symbol refused on its own is listed in
  ``stats.refused_symbols`` and served by the REST fallback.
* **Fan-out**: each subscriber gets its own size-1 "latest tick wins" channel
  (:func:`feeds.tick.open_tick_channel`); a slow consumer sees the freshest tick, never a
  backlog. A new subscriber of a symbol that is already flowing gets the latest tick at
  once. A subscriber whose receive side is closed is dropped automatically.
* **Reconnect** with jittered exponential backoff (``reconnect_initial`` doubling up to
  ``reconnect_max``, each delay drawn uniformly from its upper half), then resubscribe
  everything wanted.
* **Heartbeat**: Bybit-style JSON ping every ``heartbeat_interval`` seconds (a
  connection that answers nothing, not even the pong, for a whole interval is declared
  dead and replaced); Binance-style WebSocket ping frames with the same rule.
* **Staleness**: a wanted symbol that got no stream update for ``stale_after`` seconds
  (since its last update, or since it was subscribed) is *stale*; while stale it is
  polled with ``rest_quote`` every ``rest_poll_interval`` seconds and those quotes are
  fanned out as ticks with ``source="rest"``; the first stream update clears it.
* **Bad input** (see :mod:`feeds.protocol`) is counted in :attr:`Feed.stats` and logged
  (rate-limited); it never stops the feed. A rejected frame changes nothing: the
  protocols validate a whole frame before they store anything of it.
* **Suspect quotes** (see :mod:`feeds.guard`): a well-formed stream tick whose prices are
  more than ``suspect_threshold`` (20 %) away from the symbol's last accepted price is
  held, not fanned out, until a second source agrees: a REST look-up through
  ``rest_quote`` (one per symbol at a time, at most every ``rest_poll_interval``), or —
  only without a working REST source — the next tick or the mark price. Counted in
  ``stats.suspects`` / ``suspects_confirmed`` / ``suspects_rejected`` and logged
  (rate-limited). ``suspect_threshold=None`` turns this off (synthetic benchmark streams).

``run`` lets only cancellation out: connection failures of any kind are logged, counted
and retried.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from exchanges.symbols import exchange_symbol_id
from feeds.binance import BinanceProtocol
from feeds.bybit import BybitProtocol
from feeds.guard import CONFIRMED, DEFAULT_THRESHOLD, HELD, QuoteGuard
from feeds.protocol import (
    Ack,
    Alive,
    ExchangeProtocol,
    Ignored,
    Malformed,
    Pong,
    RequestError,
    excerpt,
)
from feeds.tick import LatestTickSender, Tick, open_tick_channel

__all__ = ["Feed", "FeedStats", "HeartbeatTimeout", "MESSAGE_QUEUE_SIZE", "RECEIVE_BUFFER_SIZE", "make_protocol"]

# trio-websocket's defaults (a queue of 1 message, 4 KiB reads) make its reader task and
# ours take turns on every frame. A deeper queue and bigger reads let each side handle a
# whole burst per turn: about 10 % more frames per second through the feed on loopback.
MESSAGE_QUEUE_SIZE = 64
RECEIVE_BUFFER_SIZE = 64 * 1024

RestQuote = Callable[[str], Awaitable["object"]]  # async (unified symbol) -> exchanges.port.Quote


def make_protocol(exchange: str) -> ExchangeProtocol:
    """The stream protocol for a ccxt exchange id."""
    if exchange == "bybit":
        return BybitProtocol(exchange)
    if exchange in ("binanceusdm", "binance"):
        return BinanceProtocol(exchange)
    raise ValueError(f"no stream protocol for exchange {exchange!r}")


class HeartbeatTimeout(Exception):
    """The server answered nothing for a whole heartbeat interval after our ping."""


@dataclass(slots=True)
class FeedStats:
    """Plain counters and gauges, for logs and (later) Prometheus. Times are trio.current_time()."""

    messages: int = 0  # frames received
    ticks: int = 0  # ticks from the stream (delivered or not)
    rest_ticks: int = 0  # ticks from the REST fallback
    alive: int = 0  # valid updates that changed no price
    malformed: int = 0
    ignored: int = 0
    request_errors: int = 0  # subscribe/unsubscribe refused by the exchange
    connects: int = 0  # successful connections
    reconnects: int = 0  # successful connections after the first
    disconnects: int = 0  # established connections that ended
    connect_failures: int = 0  # attempts that never got connected
    heartbeat_timeouts: int = 0
    rest_errors: int = 0
    errors: int = 0  # unexpected exceptions (bugs?) that ended a connection
    stale_events: int = 0  # times a symbol became stale
    suspects: int = 0  # well-formed stream ticks held as suspect (far from the last accepted price)
    suspects_confirmed: int = 0  # held ticks a second source agreed with (then delivered)
    suspects_rejected: int = 0  # held ticks dropped (refuted by REST, or superseded)
    suspect_checks: int = 0  # REST look-ups made to judge a held tick
    connected: bool = False
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    ignored_reasons: dict[str, int] = field(default_factory=dict)
    stale_symbols: set[str] = field(default_factory=set)
    refused_symbols: set[str] = field(default_factory=set)  # the exchange refused to subscribe them
    last_tick_at: dict[str, float] = field(default_factory=dict)  # any source
    last_stream_at: dict[str, float] = field(default_factory=dict)  # stream updates only

    def quote_age(self, symbol: str, now: float | None = None) -> float | None:
        """Seconds since the last tick (stream or REST) of ``symbol``; None if never."""
        at = self.last_tick_at.get(symbol)
        if at is None:
            return None
        return (trio.current_time() if now is None else now) - at

    def as_dict(self) -> dict:
        return {
            "messages": self.messages,
            "ticks": self.ticks,
            "rest_ticks": self.rest_ticks,
            "alive": self.alive,
            "malformed": self.malformed,
            "ignored": self.ignored,
            "request_errors": self.request_errors,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "disconnects": self.disconnects,
            "connect_failures": self.connect_failures,
            "heartbeat_timeouts": self.heartbeat_timeouts,
            "rest_errors": self.rest_errors,
            "errors": self.errors,
            "stale_events": self.stale_events,
            "suspects": self.suspects,
            "suspects_confirmed": self.suspects_confirmed,
            "suspects_rejected": self.suspects_rejected,
            "suspect_checks": self.suspect_checks,
            "connected": self.connected,
            "malformed_reasons": dict(self.malformed_reasons),
            "ignored_reasons": dict(self.ignored_reasons),
            "stale_symbols": sorted(self.stale_symbols),
            "refused_symbols": sorted(self.refused_symbols),
        }


class _LogLimiter:
    """At most one log line per ``interval`` seconds per key; counts what it swallowed."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# what a network connection normally dies of; anything else is logged with a traceback
_EXPECTED = (ConnectionClosed, HandshakeError, OSError, HeartbeatTimeout, trio.TooSlowError, trio.BrokenResourceError)


def _is_expected(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_expected(e) for e in exc.exceptions)
    return isinstance(exc, _EXPECTED)


def _describe(exc: BaseException) -> str:
    """One line for a connection failure, unwrapping single-exception groups."""
    exc = _unwrap(exc)
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        return f"connection closed (code {getattr(reason, 'code', '?')} {getattr(reason, 'name', '')})".rstrip()
    text = str(exc)
    cause = exc.__cause__
    if not text and cause is not None:
        text = str(cause)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _valid_price(v) -> Decimal | None:
    if isinstance(v, Decimal) and v.is_finite() and v > 0:
        return v
    return None


class Feed:
    """Market-data feed actor for one exchange. See the module docstring."""

    def __init__(
        self,
        exchange: str,
        ws_url: str,
        *,
        rest_quote: RestQuote | None = None,
        stale_after: float = 10.0,
        rest_poll_interval: float = 2.0,
        heartbeat_interval: float = 20.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        logger: logging.Logger | None = None,
        protocol: ExchangeProtocol | None = None,
        connect_timeout: float = 10.0,
        rest_timeout: float = 10.0,
        suspect_threshold: Decimal | str | float | None = DEFAULT_THRESHOLD,
    ):
        self.exchange = exchange
        self.ws_url = ws_url
        self.protocol = protocol if protocol is not None else make_protocol(exchange)
        self.rest_quote = rest_quote
        self.stale_after = stale_after
        self.rest_poll_interval = rest_poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.rest_timeout = rest_timeout
        self.log = logger if logger is not None else logging.getLogger(f"feeds.{exchange}")
        self.stats = FeedStats()
        self.guard = QuoteGuard(suspect_threshold)

        # subscriptions: unified symbol → {receive channel: sender}
        self._subs: dict[str, dict[trio.MemoryReceiveChannel, LatestTickSender]] = {}
        self._wanted_since: dict[str, float | None] = {}
        self._latest: dict[str, Tick] = {}
        self._live: set[str] = set()  # symbols subscribed on the current connection
        self._solo: set[str] = set()  # symbols to subscribe one per request (a batch was refused)
        self._changed = trio.Event()  # subscription set changed
        self._stale = self.stats.stale_symbols
        self._pollers: dict[str, trio.CancelScope] = {}
        self._checkers: dict[str, trio.CancelScope] = {}  # REST look-ups judging a held tick
        self._last_check: dict[str, float] = {}
        self._rest_failing: set[str] = set()  # the last REST look-up of these failed
        self._nursery: trio.Nursery | None = None
        self._connected = trio.Event()
        self._last_rx = 0.0
        self._session_was_healthy = False
        self._limiter = _LogLimiter()

    # -- subscriptions (sync, callable from any task) ------------------------------------

    def subscribe(self, symbol: str, sender=None):
        """Start receiving ticks of ``symbol`` (unified, e.g. "BTC/USDT:USDT").

        Returns the receive side of a size-1 latest-tick channel. Or pass your own
        ``sender`` (anything with ``send_latest(tick) -> bool`` and ``close()``, such as
        an actor's :class:`actors.mailbox.Mailbox`): ticks go to it, and it is also the
        handle to unsubscribe with. Raises ValueError for a symbol that is not a unified
        linear symbol.
        """
        exchange_symbol_id(symbol)  # validates
        if sender is None:
            sender, receiver = open_tick_channel()
        else:
            receiver = sender
        subs = self._subs.get(symbol)
        if subs is None:
            subs = self._subs[symbol] = {}
            self._wanted_since[symbol] = self._now_or_none()
            self._changed.set()
            self.log.info("%s: subscribe %s", self.exchange, symbol)
        subs[receiver] = sender
        latest = self._latest.get(symbol)
        if latest is not None and symbol not in self._stale:
            sender.send_latest(latest)
        return receiver

    def unsubscribe(self, symbol: str, receiver: trio.MemoryReceiveChannel) -> None:
        """Stop delivering to ``receiver`` (its channel is closed: the reader sees
        EndOfChannel after any unread tick). The last subscriber leaving unsubscribes the
        symbol on the exchange. Unknown symbol/receiver: no-op."""
        subs = self._subs.get(symbol)
        if not subs:
            return
        sender = subs.pop(receiver, None)
        if sender is not None:
            sender.close()
        if not subs:
            self._drop_symbol(symbol)

    def _drop_symbol(self, symbol: str) -> None:
        self._subs.pop(symbol, None)
        self._wanted_since.pop(symbol, None)
        self._latest.pop(symbol, None)
        self._stale.discard(symbol)
        self._solo.discard(symbol)
        self.stats.refused_symbols.discard(symbol)
        self.stats.last_stream_at.pop(symbol, None)
        self.stats.last_tick_at.pop(symbol, None)
        scope = self._pollers.pop(symbol, None)
        if scope is not None:
            scope.cancel()
        scope = self._checkers.pop(symbol, None)
        if scope is not None:
            scope.cancel()
        self.guard.discard_held(symbol)  # the anchor stays: a later subscriber is judged against it
        self._last_check.pop(symbol, None)
        self._rest_failing.discard(symbol)
        self._changed.set()
        self.log.info("%s: unsubscribe %s", self.exchange, symbol)

    @property
    def symbols(self) -> set[str]:
        """Symbols with at least one subscriber."""
        return set(self._subs)

    @property
    def live_symbols(self) -> set[str]:
        """Symbols subscribed on the current connection."""
        return set(self._live)

    def latest(self, symbol: str) -> Tick | None:
        """The newest tick of ``symbol`` (stream or REST), if any."""
        return self._latest.get(symbol)

    def fresh_quote(self, symbol: str) -> Tick | None:
        """The newest tick of ``symbol`` while the stream vouches that it still holds.

        Streams send a quote only when it changes; any frame for the symbol (a changed
        mark or last price counts) within ``stale_after`` says the book is as last sent.
        ``None`` once the symbol is stale: then only REST ticks, which come as ticks, tell.
        """
        if symbol in self._stale:
            return None
        last = self.stats.last_stream_at.get(symbol)
        if last is None or trio.current_time() - last > self.stale_after:
            return None
        return self._latest.get(symbol)

    def subscriber_count(self, symbol: str) -> int:
        return len(self._subs.get(symbol, ()))

    async def wait_connected(self) -> None:
        """Return once the feed is connected (immediately if it is)."""
        await self._connected.wait()

    @staticmethod
    def _now_or_none() -> float | None:
        try:
            return trio.current_time()
        except RuntimeError:  # called outside trio
            return None

    # -- the actor ----------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
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

    async def _connection_loop(self) -> None:
        attempt = 0
        while True:
            connected = False
            self._session_was_healthy = False
            try:
                async with open_websocket_url(
                    self.ws_url,
                    connect_timeout=self.connect_timeout,
                    disconnect_timeout=min(self.connect_timeout, 2.0),
                    message_queue_size=MESSAGE_QUEUE_SIZE,
                    receive_buffer_size=RECEIVE_BUFFER_SIZE,
                ) as ws:
                    connected = True
                    self.stats.connects += 1
                    if self.stats.connects > 1:
                        self.stats.reconnects += 1
                    self.log.info(
                        "%s: connected to %s (connection #%d)", self.exchange, self.ws_url, self.stats.connects
                    )
                    await self._session(ws)
            except Exception as exc:  # anything a socket can do; cancellation passes
                self._on_session_end(connected, exc)
            else:  # pragma: no cover - _session only returns by raising
                self._on_session_end(connected, None)
            if self._session_was_healthy:  # it worked for a while: start backing off afresh
                attempt = 0
            delay = self._backoff(attempt)
            attempt += 1
            self.log.info("%s: reconnecting in %.2fs", self.exchange, delay)
            await trio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.reconnect_max, self.reconnect_initial * (2 ** min(attempt, 32)))
        return random.uniform(cap / 2, cap)

    def _on_session_end(self, connected: bool, exc: BaseException | None) -> None:
        self.stats.connected = False
        if self._connected.is_set():  # (an unset one may have waiters: keep it)
            self._connected = trio.Event()
        self._live.clear()
        why = _describe(exc) if exc is not None else "closed"
        if exc is not None and not _is_expected(exc):
            self.stats.errors += 1
            self.log.error("%s: connection failed unexpectedly: %s", self.exchange, why, exc_info=exc)
        if connected:
            self.stats.disconnects += 1
            self.log.warning("%s: disconnected: %s", self.exchange, why)
        else:
            self.stats.connect_failures += 1
            ok, suppressed = self._limiter.allow("connect")
            if ok:
                more = f" ({suppressed} more)" if suppressed else ""
                self.log.warning("%s: cannot connect to %s: %s%s", self.exchange, self.ws_url, why, more)

    async def _session(self, ws) -> None:
        """One connection's life; ends only by raising (closed, dead, ...)."""
        self.protocol.reset()
        self._live.clear()
        self.stats.refused_symbols.clear()  # a new connection asks again
        self._last_rx = trio.current_time()
        self.stats.connected = True
        self._connected.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync_subscriptions, ws)
            nursery.start_soon(self._heartbeat, ws)
            await self._reader(ws)

    async def _reader(self, ws) -> None:
        parse = self.protocol.parse
        stats = self.stats
        now = trio.current_time
        get = ws.get_message
        first = True
        while True:
            raw = await get()
            t = now()
            self._last_rx = t
            stats.messages += 1
            if first:
                first = False
                self._session_was_healthy = True
            result = parse(raw, t)
            if type(result) is Tick:
                self._on_tick(result, t)
            else:
                self._on_event(result, t)

    # hot path
    def _on_tick(self, tick: Tick, t: float) -> None:
        symbol = tick.symbol
        self.stats.ticks += 1
        subs = self._subs.get(symbol)
        if subs is None:
            return  # e.g. late update after an unsubscribe
        guard = self.guard
        had_held = symbol in guard._held
        verdict = guard.check(tick, self.protocol.frames, stream_vouches=self._stream_vouches(symbol),
                              mark_info=self.protocol.mark_info)
        if verdict is HELD:
            self._on_suspect(tick)
            return
        if verdict is CONFIRMED:
            self._on_confirmed(tick, "the next tick")
        elif had_held:  # a tick in range superseded the held one
            self._sync_guard_stats()
        self._deliver(symbol, subs, tick, t)

    def _deliver(self, symbol: str, subs: dict, tick: Tick, t: float) -> None:
        self.stats.last_stream_at[symbol] = t
        if symbol in self._stale:
            self._recovered(symbol, t)
        self.stats.last_tick_at[symbol] = t
        self._latest[symbol] = tick
        self._fan_out(symbol, subs, tick)

    def _fan_out(self, symbol: str, subs: dict, tick: Tick) -> None:
        dead = None
        for receiver, sender in subs.items():
            if not sender.send_latest(tick):
                if dead is None:
                    dead = []
                dead.append(receiver)
        if dead:
            for receiver in dead:
                self.log.info("%s: dropping a closed subscriber of %s", self.exchange, symbol)
                self.unsubscribe(symbol, receiver)

    def _on_event(self, result, t: float) -> None:
        stats = self.stats
        kind = type(result)
        if kind is Alive:
            stats.alive += 1
            symbol = result.symbol
            if symbol in self._subs:
                if symbol in self.guard._held and self._stream_vouches(symbol):
                    released = self.guard.on_mark(symbol, self.protocol.mark_info)
                    if released is not None:
                        self._on_confirmed(released, "the mark price")
                        self._deliver(symbol, self._subs[symbol], released, t)
                        return
                stats.last_stream_at[symbol] = t
                if symbol in self._stale:
                    self._recovered(symbol, t)
        elif kind is Malformed:
            stats.malformed += 1
            reasons = stats.malformed_reasons
            reasons[result.reason] = reasons.get(result.reason, 0) + 1
            ok, suppressed = self._limiter.allow("malformed")
            if ok:
                more = f" ({suppressed} more since the last report)" if suppressed else ""
                detail = f" ({result.detail})" if result.detail else ""
                self.log.warning(
                    "%s: malformed message: %s%s: %s%s", self.exchange, result.reason, detail, result.raw, more
                )
        elif kind is Ignored:
            stats.ignored += 1
            stats.ignored_reasons[result.reason] = stats.ignored_reasons.get(result.reason, 0) + 1
            ok, suppressed = self._limiter.allow("ignored:" + result.reason)
            if ok:
                self.log.info("%s: ignored message: %s", self.exchange, result.reason)
        elif kind is RequestError:
            stats.request_errors += 1
            # a refusal of one of our requests is always logged; one that answers no request
            # of ours (a confused or hostile server can send any number) is rate-limited
            ok, suppressed = (True, 0) if result.symbols else self._limiter.allow("request-error")
            if ok:
                more = f" ({suppressed} more since the last report)" if suppressed else ""
                self.log.error("%s: %s refused by the exchange: %s (req %s)%s", self.exchange, result.op,
                               excerpt(result.message), result.req_id, more)
            if result.op.lower() == "subscribe":
                self._subscribe_refused(result.symbols)
        elif kind is Pong or kind is Ack:
            pass
        else:  # pragma: no cover - a protocol returned something new
            stats.ignored += 1

    # -- suspect quotes -------------------------------------------------------------------

    def _stream_vouches(self, symbol: str) -> bool:
        """May the stream confirm its own suspect ticks? Only when no REST answer can be had."""
        return self.rest_quote is None or self._nursery is None or symbol in self._rest_failing

    def _sync_guard_stats(self) -> None:
        g, s = self.guard, self.stats
        s.suspects, s.suspects_confirmed, s.suspects_rejected = g.suspects, g.confirmed, g.rejected

    def _on_suspect(self, tick: Tick) -> None:
        self._sync_guard_stats()
        symbol = tick.symbol
        ok, suppressed = self._limiter.allow("suspect")
        if ok:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            self.log.warning(
                "%s: suspect quote for %s held (bid %s ask %s last %s; last accepted price %s, more than %s%% "
                "away); waiting for a second source%s", self.exchange, tick.symbol, tick.bid, tick.ask, tick.last,
                self.guard.anchor(tick.symbol), self.guard.threshold * 100, more)
        if self.rest_quote is not None and self._nursery is not None and symbol not in self._checkers:
            scope = trio.CancelScope()
            self._checkers[symbol] = scope
            self._nursery.start_soon(self._check_suspect, symbol, scope)

    def _on_confirmed(self, tick: Tick, source: str) -> None:
        self._sync_guard_stats()
        self.log.info("%s: suspect quote for %s confirmed by %s (bid %s ask %s last %s)", self.exchange,
                      tick.symbol, source, tick.bid, tick.ask, tick.last)

    async def _check_suspect(self, symbol: str, scope: trio.CancelScope) -> None:
        """Ask REST about ``symbol`` while it has a held tick (at most every rest_poll_interval)."""
        with scope:
            try:
                while self.guard.held(symbol) is not None and symbol in self._subs:
                    last = self._last_check.get(symbol)
                    if last is not None:
                        await trio.sleep_until(last + self.rest_poll_interval)
                        if self.guard.held(symbol) is None:
                            break
                    self._last_check[symbol] = trio.current_time()
                    self.stats.suspect_checks += 1
                    try:
                        with trio.fail_after(self.rest_timeout):
                            quote = await self.rest_quote(symbol)
                    except Exception as exc:  # REST trouble: the stream may vouch meanwhile
                        self.stats.rest_errors += 1
                        self._rest_failing.add(symbol)
                        ok, suppressed = self._limiter.allow("rest-check:" + symbol)
                        if ok:
                            more = f" ({suppressed} more)" if suppressed else ""
                            self.log.warning("%s: REST look-up of a suspect quote for %s failed: %s%s",
                                             self.exchange, symbol, _describe(exc), more)
                        continue
                    self._rest_failing.discard(symbol)
                    prices = self._rest_prices(symbol, quote)
                    if prices is None or symbol not in self._subs:
                        continue
                    released = self.guard.on_rest(symbol, *prices)
                    self._sync_guard_stats()
                    if released is not None:
                        self._on_confirmed(released, "a REST look-up")
                        if symbol not in self._stale:
                            self._deliver(symbol, self._subs[symbol], released, trio.current_time())
                    else:
                        ok, suppressed = self._limiter.allow("suspect-dropped")
                        if ok:
                            more = f" ({suppressed} more since the last report)" if suppressed else ""
                            self.log.warning("%s: suspect quote for %s dropped: REST says bid %s ask %s last %s%s",
                                             self.exchange, symbol, *prices, more)
            finally:
                if self._checkers.get(symbol) is scope:
                    del self._checkers[symbol]

    def _rest_prices(self, symbol: str, quote) -> tuple | None:
        """(bid, ask, last) of a REST quote, or None (logged, counted) if it is unusable."""
        bid = _valid_price(getattr(quote, "bid", None))
        ask = _valid_price(getattr(quote, "ask", None))
        last = _valid_price(getattr(quote, "last", None))
        if bid is None and ask is None and last is None:
            self.stats.rest_errors += 1
            self.log.warning("%s: REST quote for %s has no usable price: %r", self.exchange, symbol, quote)
            return None
        if bid is not None and ask is not None and bid > ask:
            self.stats.rest_errors += 1
            self.log.warning("%s: REST quote for %s is crossed: %r", self.exchange, symbol, quote)
            return None
        return bid, ask, last

    def _subscribe_refused(self, symbols: tuple[str, ...]) -> None:
        """One bad symbol must not keep a whole batch off the stream: retry one by one."""
        wanted = [s for s in symbols if s in self._subs]
        if len(symbols) > 1:
            retry = [s for s in wanted if s not in self._solo]
            if retry:
                self._solo.update(retry)
                self._live.difference_update(retry)
                self._changed.set()
                self.log.warning("%s: subscribing %s one by one", self.exchange, ", ".join(retry))
        elif wanted:
            # stays in _live (no retry loop); it goes stale and is polled over REST.
            # A new connection tries again.
            self.stats.refused_symbols.add(wanted[0])

    async def _sync_subscriptions(self, ws) -> None:
        """Bring the connection's subscriptions in line with what is wanted, forever."""
        proto = self.protocol
        interval = proto.min_control_interval
        while True:
            self._changed = trio.Event()
            wanted = self._subs.keys()
            add = sorted(s for s in wanted if s not in self._live)
            remove = sorted(s for s in self._live if s not in self._subs)
            if not add and not remove:
                await self._changed.wait()
                continue
            now = trio.current_time()
            if remove:
                self._live.difference_update(remove)
                for msg in proto.unsubscribe_messages(remove):
                    await ws.send_message(msg)
                    await trio.sleep(interval)
            if add:
                self._live.update(add)
                for symbol in add:
                    # a symbol (re)subscribed now gets a full stale_after to deliver
                    if self._wanted_since.get(symbol) is None or symbol not in self.stats.last_stream_at:
                        self._wanted_since[symbol] = now
                batch = [s for s in add if s not in self._solo]
                messages = proto.subscribe_messages(batch) if batch else []
                for symbol in add:
                    if symbol in self._solo:
                        messages += proto.subscribe_messages([symbol])
                for msg in messages:
                    await ws.send_message(msg)
                    await trio.sleep(interval)

    async def _heartbeat(self, ws) -> None:
        interval = self.heartbeat_interval
        if interval is None or interval <= 0 or math.isinf(interval):
            return
        if self.protocol.heartbeat == "json":
            sent_at = None
            while True:
                await trio.sleep(interval)
                if sent_at is not None and self._last_rx < sent_at:
                    self.stats.heartbeat_timeouts += 1
                    raise HeartbeatTimeout(f"no reply within {interval}s of a ping")
                msg = self.protocol.ping_message()
                sent_at = trio.current_time()
                await ws.send_message(msg)
        else:
            while True:
                await trio.sleep(interval)
                with trio.move_on_after(interval) as scope:
                    await ws.ping()
                if scope.cancelled_caught:
                    self.stats.heartbeat_timeouts += 1
                    raise HeartbeatTimeout(f"no pong within {interval}s of a ping")

    # -- staleness and the REST fallback -------------------------------------------------

    async def _stale_watcher(self) -> None:
        period = min(max(min(self.stale_after, self.rest_poll_interval) / 4, 0.01), 1.0)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for symbol in list(self._subs):
                if symbol in self._stale:
                    continue
                last = self.stats.last_stream_at.get(symbol)
                since = self._wanted_since.get(symbol)
                if since is None:
                    since = self._wanted_since[symbol] = now
                if last is None or last < since:
                    last = since
                if now - last >= self.stale_after:
                    self._mark_stale(symbol, now - last)

    def _mark_stale(self, symbol: str, silent_for: float) -> None:
        self._stale.add(symbol)
        self.stats.stale_events += 1
        self.log.warning(
            "%s: %s is stale (no stream update for %.1fs)%s",
            self.exchange,
            symbol,
            silent_for,
            "; polling REST" if self.rest_quote is not None else "",
        )
        if self.rest_quote is not None and self._nursery is not None:
            scope = trio.CancelScope()
            self._pollers[symbol] = scope
            self._nursery.start_soon(self._poll_rest, symbol, scope)

    def _recovered(self, symbol: str, t: float) -> None:
        self._stale.discard(symbol)
        scope = self._pollers.pop(symbol, None)
        if scope is not None:
            scope.cancel()
        self.log.info("%s: %s stream recovered", self.exchange, symbol)

    async def _poll_rest(self, symbol: str, scope: trio.CancelScope) -> None:
        with scope:
            while symbol in self._stale and symbol in self._subs:
                try:
                    with trio.fail_after(self.rest_timeout):
                        quote = await self.rest_quote(symbol)
                except Exception as exc:  # REST trouble is logged and retried
                    self.stats.rest_errors += 1
                    ok, suppressed = self._limiter.allow("rest:" + symbol)
                    if ok:
                        more = f" ({suppressed} more)" if suppressed else ""
                        self.log.warning(
                            "%s: REST quote for %s failed: %s%s", self.exchange, symbol, _describe(exc), more
                        )
                else:
                    self._on_rest_quote(symbol, quote)
                await trio.sleep(self.rest_poll_interval)

    def _on_rest_quote(self, symbol: str, quote) -> None:
        prices = self._rest_prices(symbol, quote)
        if prices is None:
            return
        bid, ask, last = prices
        subs = self._subs.get(symbol)
        if subs is None or symbol not in self._stale:
            return
        self.guard.on_rest(symbol, bid, ask, last)  # the new anchor; a held tick is settled
        self._sync_guard_stats()
        t = trio.current_time()
        tick = Tick(self.exchange, symbol, bid, ask, last, getattr(quote, "timestamp", None), t, "rest")
        self.stats.rest_ticks += 1
        self.stats.last_tick_at[symbol] = t
        self._latest[symbol] = tick
        self._fan_out(symbol, subs, tick)
