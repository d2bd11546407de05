"""actor_kb: memory per aged-position actor, over ``positions`` running actors.

The real Service with the real :class:`feeds.feed.Feed` connected to :mod:`bench.blaster`
(so each actor's symbol subscription, tick channel, protocol state and latest tick are
counted, as in production). After the service is idle, ``positions`` active aged rows
are added to PostgreSQL and the detector's recovery (``registry.recover``) starts their
actors; once every one is watching, has had its snapshot tick and the writer is idle,
memory is measured again (after ``gc.collect()``). Everything an actor brings along is
in the difference: its supervisor record and tasks, its state (and its registry entry),
its inbox, timers, tick channel and the feed's per-symbol entries, the detector's id map.

The key is ``tracemalloc``'s count: Python heap allocated and still live, per actor,
once the start-up residue is gone (each query leaves a cancelled asyncio timer —
asyncpg's 10 s command timeout — in trio-asyncio's heap until it expires; ``settle_s``
waits for that, and the value right after start is reported too). Beside it: the RSS
growth over the same interval, less tracemalloc's own bookkeeping (what the OS sees,
allocator overhead included), and the heap growth by source file.
"""

from __future__ import annotations

import gc
import tracemalloc

import trio

from bench.common import (
    EXCHANGE, QUIET_FEED, Blaster, connect, make_service, rss_bytes, running_children, seed_aged, wait_until,
)
from service.asyncio_bridge import open_asyncio_loop


async def _add_actors(svc, feed, db, positions: int) -> None:
    await seed_aged(db, positions)
    ticks0 = feed.stats.ticks
    await svc.registry.recover()
    await wait_until(lambda: svc.registry.watching() == positions and running_children(svc) == positions, timeout=120)
    await wait_until(lambda: feed.stats.ticks - ticks0 >= positions, timeout=120)
    await wait_until(lambda: svc.writer.depth == 0, timeout=60)
    await trio.sleep(0.3)  # let the last writes and replies settle


def _settled_traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def bench_memory(url: str, *, positions: int = 1000, settle_s: float = 12.0) -> dict:
    from feeds.feed import Feed  # noqa: PLC0415
    async with open_asyncio_loop():
        db = await connect(url)
        try:
            async with Blaster("feed") as blaster:
                feed = Feed(EXCHANGE, blaster.url, timings=QUIET_FEED)
                svc = make_service(db, None, feed)  # no exchange: the detector only does recovery
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(svc.run)
                    await feed.wait_connected()
                    await wait_until(lambda: svc.detector.polls >= 1, timeout=60)
                    await trio.sleep(0.3)

                    tracemalloc.start()
                    try:
                        await trio.sleep(0.3)
                        snap0 = tracemalloc.take_snapshot()
                        t0, rss0, tm0 = _settled_traced(), rss_bytes(), tracemalloc.get_tracemalloc_memory()
                        await _add_actors(svc, feed, db, positions)
                        first = _settled_traced()
                        # Each query leaves a cancelled asyncio timer (asyncpg's command timeout, 10 s)
                        # in trio-asyncio's heap until it expires: wait for that start-up residue to go.
                        t1, waited = first, 0.0
                        while waited < settle_s:
                            await trio.sleep(1.0)
                            waited += 1.0
                            now = _settled_traced()
                            if abs(t1 - now) <= 0.002 * (t1 - t0) and waited >= 2:
                                t1 = now
                                break
                            t1 = now
                        rss1, tm1 = rss_bytes(), tracemalloc.get_tracemalloc_memory()
                        children = len(svc.positions.children())
                        snap1 = tracemalloc.take_snapshot()
                    finally:
                        tracemalloc.stop()
                    by_file = snap1.compare_to(snap0, "filename")[:10]
                    svc.shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
    return {"actor_kb": round((t1 - t0) / positions / 1024, 2),
            "details": {"positions": positions, "actors_running": children, "traced_delta_bytes": t1 - t0,
                        "rss_kb_per_actor": round(((rss1 - rss0) - (tm1 - tm0)) / positions / 1024, 2),
                        "kb_per_actor_right_after_start": round((first - t0) / positions / 1024, 2),
                        "settled_after_s": waited,
                        "kb_per_actor_by_file": {_short(d.traceback[0].filename): round(d.size_diff / positions / 1024, 2)
                                                 for d in by_file}}}


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path
