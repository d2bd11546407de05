"""A target that moves past a price that stands still closes without waiting for a tick.

Streams send a quote only when it changes. In the progressive phase the target falls
(for a long) every instant, so a quote that was short of it can become enough with no
new frame. Rules: MockClock, real database, the in-memory exchange and feed.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from decimal import Decimal as D

import trio

from actors.policy import PolicyConfig, assess
from doubles.exchange import MemoryExchange
from tests.support import MemoryFeed, make_service

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"


async def test_one_quote_then_silence_still_closes_when_the_target_reaches_it(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    ex.set_quote(SYMBOL, "99.2", "99.3", "99.2")
    feed = MemoryFeed("bybit")
    # 12 h old: progressive for an hour, target about 99.5; it falls to 99.2 about half an hour later
    svc = make_service(mdb, ex, feed, origin=T0 + timedelta(hours=12), poll_interval=600)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        with trio.fail_after(3600):
            while not svc.registry.watching():
                await trio.sleep(1)
        feed.push(SYMBOL, bid="99.2", ask="99.3", last="99.2")  # the only tick there will ever be
        pushed_at = svc.clock.now()
        with trio.fail_after(6 * 3600):
            while not ex.orders:
                await trio.sleep(30)
        closed_at = svc.clock.now()
        svc.shutdown()
        n.cancel_scope.cancel()
    assert len(ex.orders) == 1
    # It closed when the target reached 99.2: a minute earlier the target was above it.
    target = lambda at: assess("long", D(100), T0, at, PolicyConfig()).target_price  # noqa: E731
    assert target(closed_at) <= D("99.2") < target(closed_at - timedelta(minutes=1))
    assert closed_at - pushed_at > timedelta(minutes=10)  # long after the only tick


async def test_an_old_quote_nobody_vouches_for_closes_nothing(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    ex.set_quote(SYMBOL, "99.2", "99.3", "99.2")
    feed = MemoryFeed("bybit")
    feed.alive = False  # the stream is down: its last quote may be anything by now
    svc = make_service(mdb, ex, feed, origin=T0 + timedelta(hours=12), poll_interval=600)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        with trio.fail_after(3600):
            while not svc.registry.watching():
                await trio.sleep(1)
        feed.push(SYMBOL, bid="99.2", ask="99.3", last="99.2")
        await trio.sleep(6 * 3600)  # the target passed 99.2 long ago; no quote says the book is still there
        svc.shutdown()
        n.cancel_scope.cancel()
    assert ex.orders == []
