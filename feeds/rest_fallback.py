"""The REST fallback: prices polled over REST while the stream says nothing.

While a symbol is stale (:mod:`feeds.staleness`) — the stream is down, or it is silent
about that symbol, or the exchange refused to subscribe it — one task per symbol polls
the feed's ``rest_quote`` every ``rest_poll_interval`` seconds and fans each usable quote
out as a tick with ``source="rest"``. A REST quote is the quote guard's new anchor
(:mod:`feeds.guard`): it settles a held suspect tick. Failed or unusable look-ups are
counted in ``stats.rest_errors``, logged (rate-limited) and retried; the first stream
update stops the polling.

:class:`RestFallback` is one part of :class:`feeds.feed.Feed`, which mixes it in; it
works on the feed's state (``stats``, ``guard``, the subscriptions, ...).
"""

from __future__ import annotations

from decimal import Decimal

import trio

from exchanges.port import Quote
from feeds.failures import describe_failure
from feeds.state import FeedState, RestPrices, RestQuote
from feeds.tick import Tick

__all__ = ["RestFallback"]


def _valid_price(v: object) -> Decimal | None:
    if isinstance(v, Decimal) and v.is_finite() and v > 0:
        return v
    return None


class RestFallback(FeedState):
    """The REST polling of :class:`feeds.feed.Feed`. See the module docstring."""

    def _init_rest_fallback(self) -> None:
        self._pollers: dict[str, trio.CancelScope] = {}  # symbol → its polling task

    def _start_rest_polling(self, symbol: str) -> None:
        """Poll ``symbol`` over REST until it recovers (if there is REST and ``run`` runs)."""
        if self.rest_quote is not None and self._nursery is not None:
            scope = trio.CancelScope()
            self._pollers[symbol] = scope
            self._nursery.start_soon(self._poll_rest, symbol, self.rest_quote, scope)

    def _stop_rest_polling(self, symbol: str) -> None:
        scope = self._pollers.pop(symbol, None)
        if scope is not None:
            scope.cancel()

    async def _poll_rest(self, symbol: str, rest_quote: RestQuote, scope: trio.CancelScope) -> None:
        with scope:
            while symbol in self._stale and symbol in self._subs:
                try:
                    with trio.fail_after(self.rest_timeout):
                        quote = await rest_quote(symbol)
                except Exception as exc:  # REST trouble is logged and retried
                    self.stats.rest_errors += 1
                    ok, suppressed = self._limiter.allow("rest:" + symbol)
                    if ok:
                        more = f" ({suppressed} more)" if suppressed else ""
                        self.log.warning(
                            "%s: REST quote for %s failed: %s%s", self.exchange, symbol, describe_failure(exc), more
                        )
                else:
                    self._on_rest_quote(symbol, quote)
                await trio.sleep(self.rest_poll_interval)

    def _on_rest_quote(self, symbol: str, quote: Quote) -> None:
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

    def _rest_prices(self, symbol: str, quote: Quote) -> RestPrices | None:
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
