"""Subscriptions: which symbols the feed wants, who gets their ticks, and keeping the
connection's subscriptions in line with that.

Subscriptions live in the :class:`feeds.feed.Feed` object, not in the connection:
:meth:`~Subscriptions.subscribe` / :meth:`~Subscriptions.unsubscribe` are synchronous,
may be called before or while :meth:`feeds.feed.Feed.run` runs, and survive reconnects
and restarts of ``run``. The first subscriber of a symbol makes the connection subscribe
it, the last one leaving unsubscribes it — on the live connection, without reconnecting
(:meth:`~Subscriptions._sync_subscriptions`, one task per connection). Bursts of changes
are coalesced into few requests and paced by the protocol's ``min_control_interval`` to
respect exchange rate limits. If the exchange refuses a batch (one unknown symbol can
sink a whole Binance SUBSCRIBE), its symbols are retried one per request; a symbol
refused on its own is listed in ``stats.refused_symbols`` and served by the REST
fallback (:mod:`feeds.rest_fallback`).

Fan-out: each subscriber gets its own size-1 "latest tick wins" channel
(:func:`feeds.tick.open_tick_channel`); a slow consumer sees the freshest tick, never a
backlog. A new subscriber of a symbol that is already flowing gets the latest tick at
once. A subscriber whose receive side is closed is dropped automatically.

:class:`Subscriptions` is one part of :class:`feeds.feed.Feed`, which mixes it in; it
works on the feed's state (``stats``, ``protocol``, the stale set, ...).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, TypeVar, overload

import trio

from exchanges.symbols import exchange_symbol_id
from feeds.state import FeedState, Subscribers
from feeds.tick import Tick, TickSink, open_tick_channel

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

__all__ = ["Subscriptions"]

Sink = TypeVar("Sink", bound=TickSink)


class Subscriptions(FeedState):
    """The subscription half of :class:`feeds.feed.Feed`. See the module docstring."""

    def _init_subscriptions(self) -> None:
        # unified symbol → {receive channel (or the sender itself): sender}
        self._subs: dict[str, Subscribers] = {}
        # when each wanted symbol was (re)subscribed: its staleness clock starts there
        self._wanted_since: dict[str, float | None] = {}
        self._latest: dict[str, Tick] = {}
        self._live: set[str] = set()  # symbols subscribed on the current connection
        self._solo: set[str] = set()  # symbols to subscribe one per request (a batch was refused)
        self._changed = trio.Event()  # subscription set changed

    # -- sync, callable from any task ---------------------------------------------------

    @overload
    def subscribe(self, symbol: str) -> trio.MemoryReceiveChannel[Tick]: ...
    @overload
    def subscribe(self, symbol: str, sender: Sink) -> Sink: ...

    def subscribe(self, symbol: str, sender: TickSink | None = None) -> Hashable:
        """Start receiving ticks of ``symbol`` (unified, e.g. "BTC/USDT:USDT").

        Returns the receive side of a size-1 latest-tick channel. Or pass your own
        ``sender`` (anything with ``send_latest(tick) -> bool`` and ``close()``, such as
        an actor's :class:`actors.mailbox.Mailbox`): ticks go to it, and it is also the
        handle to unsubscribe with. Raises ValueError for a symbol that is not a unified
        linear symbol.
        """
        exchange_symbol_id(symbol)  # validates
        receiver: Hashable
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

    def unsubscribe(self, symbol: str, receiver: Hashable) -> None:
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

    def subscriber_count(self, symbol: str) -> int:
        return len(self._subs.get(symbol, ()))

    @staticmethod
    def _now_or_none() -> float | None:
        try:
            return trio.current_time()
        except RuntimeError:  # called outside trio
            return None

    # -- fan-out ------------------------------------------------------------------------

    def _fan_out(self, symbol: str, subs: Subscribers, tick: Tick) -> None:
        dead: list[Hashable] | None = None
        for receiver, sender in subs.items():
            if not sender.send_latest(tick):
                if dead is None:
                    dead = []
                dead.append(receiver)
        if dead:
            for receiver in dead:
                self.log.info("%s: dropping a closed subscriber of %s", self.exchange, symbol)
                self.unsubscribe(symbol, receiver)

    # -- the connection's side ----------------------------------------------------------

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

    async def _sync_subscriptions(self, ws: WebSocketConnection) -> None:
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
