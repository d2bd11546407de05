"""detection_ms and actor_restart_ms: the real Service on the real clock.

detection_ms — positions on a :class:`~doubles.exchange.MemoryExchange` whose open time
makes them cross ``max_age_hours`` about a second after the service starts (one every
``spacing`` seconds, so each is measured on its own). Path: the detector's age timer
fires → the aged row is created in PostgreSQL → the actor is started by the positions
supervisor, loads its row, subscribes its symbol and handles its ``Start``. Measured on
the policy clock (the real clock here) from the crossing instant to that first step
(the observers' ``state_changed``); the median over the positions.

actor_restart_ms — with ``positions`` actors watching, one at a time is crashed by
fault injection (``registry.crash_on_next_tick`` and a tick): measured from pushing that
tick to the restarted instance's first step (its ``Start``, handled right after it has
reloaded its row, registered its inbox and subscribed again). Each crash hits a
different actor, so every restart is a first, un-escalated one.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import trio

from actors.policy import PolicyConfig, aged_at
from bench.common import (
    EXCHANGE, watch,
    connect, make_service, median, memory_exchange, percentile, seed_aged, symbol,
    wait_until,
)
from doubles.feed import MemoryFeed
from service.asyncio_bridge import open_asyncio_loop


async def bench_detection(url: str, *, positions: int = 10, first_after: float = 1.0,
                          spacing: float = 0.25) -> dict:
    from doubles.exchange import MemoryExchange  # noqa: PLC0415
    config = PolicyConfig()
    async with open_asyncio_loop():
        db = await connect(url)
        try:
            ex = MemoryExchange(name="bybit")
            now = datetime.now(timezone.utc)
            for i in range(positions):
                crossing = now + timedelta(seconds=first_after + i * spacing)
                ex.set_position(symbol(i), "long", "1", "100",
                                opened_at=crossing - timedelta(microseconds=int(config.max_age_hours * 3_600_000_000)))
            feed = MemoryFeed(EXCHANGE)
            svc = make_service(db, ex, feed, config=config)
            seen: dict = {}

            def on_state(new, old):
                if new.aged_id not in seen:
                    seen[new.aged_id] = (svc.clock.now() - aged_at(new.opened_at, config)).total_seconds()
            lag_row: list[float] = []
            watch(svc, state_changed=on_state, position_detected=lag_row.append)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(svc.run)
                await wait_until(lambda: len(seen) == positions, timeout=first_after + positions * spacing + 30)
                subscribed = sum(len(v) for v in feed.subscribers.values())
                svc.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
    values = sorted(seen.values())
    return {"detection_ms": round(median(values) * 1000, 3),
            "details": {"positions": positions, "subscribed": subscribed,
                        "detection_ms_all": [round(v * 1000, 2) for v in values],
                        "crossing_to_aged_row_ms_median": round(median(lag_row) * 1000, 3) if lag_row else None}}


async def bench_restart(url: str, *, positions: int = 100, crashes: int = 7, gap: float = 0.3) -> dict:
    async with open_asyncio_loop():
        db = await connect(url)
        try:
            book = await seed_aged(db, positions)
            ex = memory_exchange(positions, book.now)
            feed = MemoryFeed(EXCHANGE)
            svc = make_service(db, ex, feed)
            steps: dict = {}

            def on_state(new, old):
                steps.setdefault(new.aged_id, []).append(trio.current_time())
            watch(svc, state_changed=on_state)
            times = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(svc.run)
                await wait_until(lambda: svc.registry.watching() == positions, timeout=60)
                await wait_until(lambda: svc.detector.polls >= 1, timeout=60)
                await wait_until(lambda: svc.writer.depth == 0, timeout=60)
                for k in range(crashes):
                    i = (k * 37) % positions
                    aged_id = book.aged_ids[i]
                    old_inbox = svc.registry.mailbox(aged_id)
                    svc.registry.crash_on_next_tick(aged_id)
                    crashed_at = trio.current_time()
                    feed.push(symbol(i), D("50.1"), D("60"), D("50.1"))
                    await wait_until(lambda: any(t > crashed_at for t in steps.get(aged_id, ()))
                                     and svc.registry.mailbox(aged_id) not in (None, old_inbox), timeout=30,
                                     interval=0.002)
                    times.append(min(t for t in steps[aged_id] if t > crashed_at) - crashed_at)
                    await trio.sleep(gap)
                restarts = sum(c.restarts for c in svc.positions.children().values())
                svc.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
    return {"actor_restart_ms": round(median(times) * 1000, 3),
            "details": {"restarts_seen_by_supervisor": restarts, "positions": positions,
                        "restart_ms_all": [round(t * 1000, 2) for t in times],
                        "restart_ms_p90": round(percentile(times, 90) * 1000, 2),
                        "supervisor_backoff_initial_ms": svc.positions._backoff.initial * 1000}}
