"""Staleness: when a symbol's quote can no longer be trusted, and what happens then.

Streams send a quote only when it changes, so silence is normal for a while. A wanted
symbol that got no stream update for ``stale_after`` seconds (since its last update, or
since it was subscribed) is *stale*: it is listed in ``stats.stale_symbols``,
:meth:`~Staleness.fresh_quote` stops vouching for it, and — when the feed has a
``rest_quote`` — the REST fallback (:mod:`feeds.rest_fallback`) starts polling it. The
first stream update clears it (:meth:`~Staleness._recovered`).

:class:`Staleness` is one part of :class:`feeds.feed.Feed`, which mixes it in; it works
on the feed's state (``stats``, the subscriptions, the REST pollers, ...).
"""

from __future__ import annotations

import trio

from feeds.state import FeedState
from feeds.tick import Tick

__all__ = ["Staleness"]


class Staleness(FeedState):
    """The staleness watch of :class:`feeds.feed.Feed`. See the module docstring."""

    def _init_staleness(self) -> None:
        self._stale = self.stats.stale_symbols  # one set: the stats show it as it is

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

    async def _stale_watcher(self) -> None:
        """Mark symbols stale as their silence passes ``stale_after``; runs as long as ``run``."""
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
        self._start_rest_polling(symbol)

    def _recovered(self, symbol: str, t: float) -> None:
        self._stale.discard(symbol)
        self._stop_rest_polling(symbol)
        self.log.info("%s: %s stream recovered", self.exchange, symbol)
