"""Suspect quotes: stream ticks the quote guard holds until a second source agrees.

A well-formed stream tick whose prices are more than ``suspect_threshold`` (20 %) away
from the symbol's last accepted price is held by the guard (:mod:`feeds.guard`), not
fanned out. A REST look-up through ``rest_quote`` judges it (one per symbol at a time, at
most every ``rest_poll_interval``): it confirms the held tick, which is then delivered,
or refutes it, which drops it. Only without a working REST source may the stream vouch
for itself — the next tick or the mark price confirms. Counted in ``stats.suspects`` /
``suspects_confirmed`` / ``suspects_rejected`` / ``suspect_checks`` and logged
(rate-limited). ``suspect_threshold=None`` turns this off (synthetic benchmark streams).

:class:`Suspects` is one part of :class:`feeds.feed.Feed`, which mixes it in; it works on
the feed's state (``stats``, ``guard``, the subscriptions, the REST fallback, ...).
"""

from __future__ import annotations

import trio

from feeds.failures import describe_failure
from feeds.state import FeedState, RestQuote
from feeds.tick import Tick

__all__ = ["Suspects"]


class Suspects(FeedState):
    """The suspect-quote handling of :class:`feeds.feed.Feed`. See the module docstring."""

    def _init_suspects(self) -> None:
        self._checkers: dict[str, trio.CancelScope] = {}  # REST look-ups judging a held tick
        self._last_check: dict[str, float] = {}
        self._rest_failing: set[str] = set()  # the last REST look-up of these failed

    def _stream_vouches(self, symbol: str) -> bool:
        """May the stream confirm its own suspect ticks? Only when no REST answer can be had."""
        return self.rest_quote is None or self._nursery is None or symbol in self._rest_failing

    def _sync_guard_stats(self) -> None:
        g, s = self.guard, self.stats
        s.suspects, s.suspects_confirmed, s.suspects_rejected = g.suspects, g.confirmed, g.rejected

    def _on_suspect(self, tick: Tick) -> None:
        self._sync_guard_stats()
        symbol = tick.symbol
        assert self.guard.threshold is not None  # only a guard that is on holds ticks
        ok, suppressed = self._limiter.allow("suspect")
        if ok:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            self.log.warning(
                "%s: suspect quote for %s held (bid %s ask %s last %s; last accepted price %s, more than %s%% "
                "away); waiting for a second source%s",
                self.exchange,
                tick.symbol,
                tick.bid,
                tick.ask,
                tick.last,
                self.guard.anchor(tick.symbol),
                self.guard.threshold * 100,
                more,
            )
        if self.rest_quote is not None and self._nursery is not None and symbol not in self._checkers:
            scope = trio.CancelScope()
            self._checkers[symbol] = scope
            self._nursery.start_soon(self._check_suspect, symbol, self.rest_quote, scope)

    def _on_confirmed(self, tick: Tick, source: str) -> None:
        self._sync_guard_stats()
        self.log.info(
            "%s: suspect quote for %s confirmed by %s (bid %s ask %s last %s)",
            self.exchange,
            tick.symbol,
            source,
            tick.bid,
            tick.ask,
            tick.last,
        )

    async def _check_suspect(self, symbol: str, rest_quote: RestQuote, scope: trio.CancelScope) -> None:
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
                            quote = await rest_quote(symbol)
                    except Exception as exc:  # REST trouble: the stream may vouch meanwhile
                        self.stats.rest_errors += 1
                        self._rest_failing.add(symbol)
                        ok, suppressed = self._limiter.allow("rest-check:" + symbol)
                        if ok:
                            more = f" ({suppressed} more)" if suppressed else ""
                            self.log.warning(
                                "%s: REST look-up of a suspect quote for %s failed: %s%s",
                                self.exchange,
                                symbol,
                                describe_failure(exc),
                                more,
                            )
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
                            self.log.warning(
                                "%s: suspect quote for %s dropped: REST says bid %s ask %s last %s%s",
                                self.exchange,
                                symbol,
                                *prices,
                                more,
                            )
            finally:
                if self._checkers.get(symbol) is scope:
                    del self._checkers[symbol]
