"""What the feed does with each parsed frame.

A :class:`feeds.tick.Tick` (the hot path) goes through the quote guard
(:mod:`feeds.suspects`) to the symbol's subscribers, and proves the stream alive for
that symbol (:mod:`feeds.staleness`). Every other parse result (see
:mod:`feeds.protocol`) is counted in ``stats``: an :class:`~feeds.protocol.Alive`
refreshes the symbol like a tick; bad input (:class:`~feeds.protocol.Malformed`,
:class:`~feeds.protocol.Ignored`) and refused requests
(:class:`~feeds.protocol.RequestError`) are logged, rate-limited. Nothing a frame says
stops the feed, and a rejected frame changes nothing: the protocols validate a whole
frame before they store anything of it.

:class:`Delivery` is one part of :class:`feeds.feed.Feed`, which mixes it in; it works on
the feed's state (``stats``, ``guard``, ``protocol``, the subscriptions, ...).
"""

from __future__ import annotations

from feeds.guard import CONFIRMED, HELD
from feeds.protocol import Ack, Alive, Ignored, Malformed, ParseResult, Pong, RequestError, excerpt
from feeds.state import FeedState, Subscribers
from feeds.tick import Tick

__all__ = ["Delivery"]


class Delivery(FeedState):
    """Frame handling of :class:`feeds.feed.Feed`. See the module docstring."""

    # hot path
    def _on_tick(self, tick: Tick, t: float) -> None:
        symbol = tick.symbol
        self.stats.ticks += 1
        subs = self._subs.get(symbol)
        if subs is None:
            return  # e.g. late update after an unsubscribe
        guard = self.guard
        had_held = symbol in guard._held
        verdict = guard.check(
            tick, self.protocol.frames, stream_vouches=self._stream_vouches(symbol), mark_info=self.protocol.mark_info
        )
        if verdict is HELD:
            self._on_suspect(tick)
            return
        if verdict is CONFIRMED:
            self._on_confirmed(tick, "the next tick")
        elif had_held:  # a tick in range superseded the held one
            self._sync_guard_stats()
        self._deliver(symbol, subs, tick, t)

    def _deliver(self, symbol: str, subs: Subscribers, tick: Tick, t: float) -> None:
        self.stats.last_stream_at[symbol] = t
        if symbol in self._stale:
            self._recovered(symbol, t)
        self.stats.last_tick_at[symbol] = t
        self._latest[symbol] = tick
        self._fan_out(symbol, subs, tick)

    def _on_event(self, result: ParseResult, t: float) -> None:
        stats = self.stats
        if type(result) is Alive:
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
        elif type(result) is Malformed:
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
        elif type(result) is Ignored:
            stats.ignored += 1
            stats.ignored_reasons[result.reason] = stats.ignored_reasons.get(result.reason, 0) + 1
            ok, suppressed = self._limiter.allow("ignored:" + result.reason)
            if ok:
                self.log.info("%s: ignored message: %s", self.exchange, result.reason)
        elif type(result) is RequestError:
            stats.request_errors += 1
            # a refusal of one of our requests is always logged; one that answers no request
            # of ours (a confused or hostile server can send any number) is rate-limited
            ok, suppressed = (True, 0) if result.symbols else self._limiter.allow("request-error")
            if ok:
                more = f" ({suppressed} more since the last report)" if suppressed else ""
                self.log.error(
                    "%s: %s refused by the exchange: %s (req %s)%s",
                    self.exchange,
                    result.op,
                    excerpt(result.message),
                    result.req_id,
                    more,
                )
            if result.op.lower() == "subscribe":
                self._subscribe_refused(result.symbols)
        elif type(result) is Pong or type(result) is Ack:
            pass
        else:  # pragma: no cover - a protocol returned something new
            stats.ignored += 1
