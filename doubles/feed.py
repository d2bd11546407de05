"""An in-process tick source for tests and benchmarks (no socket, no exchange).

It has the :class:`feeds.feed.Feed`'s ``subscribe``/``unsubscribe`` and ``run``;
:meth:`MemoryFeed.push` delivers a tick to every subscriber of a symbol at once.
"""

from __future__ import annotations

from decimal import Decimal

import trio

from feeds.tick import Tick, open_tick_channel


class MemoryFeed:
    """A feed whose ticks the test pushes by hand (:meth:`push`); see the module docstring."""

    def __init__(self, exchange: str):
        self.exchange = exchange
        self.subscribers: dict[str, list] = {}
        self.latest: dict[str, Tick] = {}
        self.alive = True  # fresh_quote: whether the "stream" vouches for its last quotes

    def subscribe(self, symbol: str, sender=None):
        """As :meth:`feeds.feed.Feed.subscribe`."""
        if sender is None:
            sender, receiver = open_tick_channel()
        else:
            receiver = sender
        self.subscribers.setdefault(symbol, []).append((sender, receiver))
        return receiver

    def unsubscribe(self, symbol: str, receiver) -> None:
        subs = self.subscribers.get(symbol, [])
        for entry in list(subs):
            if entry[1] is receiver:
                subs.remove(entry)
                entry[0].close()

    def push(self, symbol: str, bid=None, ask=None, last=None) -> int:
        """Deliver one tick (prices as Decimals or strings); return how many subscribers got it."""
        d = lambda v: None if v is None else Decimal(v)  # noqa: E731
        tick = Tick(self.exchange, symbol, d(bid), d(ask), d(last), None, trio.current_time())
        self.latest[symbol] = tick
        subs = self.subscribers.get(symbol, [])
        for sender, _ in subs:
            sender.send_latest(tick)
        return len(subs)

    def fresh_quote(self, symbol: str) -> Tick | None:
        """As :meth:`feeds.feed.Feed.fresh_quote`: the last tick pushed, while ``alive``."""
        return self.latest.get(symbol) if self.alive else None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()
