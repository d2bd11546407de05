"""events_per_s: audit events written to PostgreSQL per second through the real path.

The real :class:`storage.writer.StorageWriter` (batches of up to 2,000, one trio→asyncio
crossing per batch) over the real :meth:`storage.Database.write_batch` (one transaction
per batch, ``executemany`` for runs of events). The rows are the ones actors write most:
``price_check`` :class:`storage.ops.AddEvent` rows with prices, distance and time, a few
in ten with lifecycle metadata (jsonb). They are built before the clock starts (actors
make them, not the writer) and submitted in chunks, keeping the writer's buffer below its
shedding limit, as a busy service would; the clock stops when the writer reports that
everything is committed. The row count in the table is checked.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal as D
from uuid import uuid4

import asyncpg
import trio
import trio_asyncio

from storage.writer import StorageWriter
from bench.common import connect, percentile, seed_aged
from storage import ops as op
from service.asyncio_bridge import open_asyncio_loop


def _rows(aged_ids, count: int) -> list:
    now = datetime.now(timezone.utc)
    rows = []
    for k in range(count):
        aged = aged_ids[k % len(aged_ids)]
        if k % 10 == 9:
            rows.append(op.AddEvent(aged, "aged.phase.changed", target_price=D("99.5"),
                                    metadata={"from": "grace_active", "to": "progressive_active",
                                              "phase": "progressive", "loss_tolerance_percent": "0.5"}, at=now))
        else:
            rows.append(op.AddEvent(aged, "price_check", market_price=D("50.%06d" % k), target_price=D("100.2"),
                                    price_distance_percent=D("-49.9011976047904191616766467"), at=now))
    return rows


async def bench_events(url: str, *, rows: int = 100_000, chunk: int = 5_000, max_depth: int = 20_000) -> dict:
    async with open_asyncio_loop():
        db = await connect(url)
        try:
            book = await seed_aged(db, 50)
            items = _rows(book.aged_ids, rows)
            writer = StorageWriter(db.write_batch)
            batches = []
            inner = writer._write_batch

            async def counting(batch):
                batches.append(len(batch))
                return await inner(batch)
            writer._write_batch = counting
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                began = time.perf_counter()
                for i in range(0, rows, chunk):
                    while writer.depth > max_depth:
                        await trio.sleep(0.001)
                    writer.submit(*items[i:i + chunk])
                    await trio.sleep(0)
                await writer.wait_flushed()
                elapsed = time.perf_counter() - began
                nursery.cancel_scope.cancel()
            stored = await db.fetchval("SELECT count(*) FROM monitoring.aged_positions_monitoring")
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
    if stored != rows or writer.dropped_routine or writer.rejected:
        raise RuntimeError(f"events bench lost rows: stored {stored} of {rows}, dropped {writer.dropped_routine}, "
                           f"rejected {writer.rejected}")
    return {"events_per_s": round(rows / elapsed),
            "details": {"rows": rows, "seconds": round(elapsed, 3), "batches": len(batches),
                        "mean_batch": round(sum(batches) / len(batches)) if batches else 0}}


async def durable_commit_floor(url: str, *, commits: int = 300, pause: float = 0.002) -> dict:
    """p50/p99 of one durable single-row commit: the least a write-ahead row can cost.

    A dedicated asyncpg connection (no pool), one INSERT per commit into a scratch
    table shaped like a write-ahead row, nothing else running. Must run inside the
    asyncio loop. The table is dropped afterwards.
    """
    conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(url)
    run = trio_asyncio.aio_as_trio(conn.execute)
    try:
        await run("DROP TABLE IF EXISTS bench_commit_probe")
        await run("CREATE TABLE bench_commit_probe (client_order_id text PRIMARY KEY, aged_position_id uuid, "
                  "attempt int, requested_qty numeric, state text, created_at timestamptz DEFAULT now())")
        seconds = []
        for k in range(commits):
            began = time.perf_counter()
            await run("INSERT INTO bench_commit_probe (client_order_id, aged_position_id, attempt, requested_qty, state)"
                      " VALUES ($1, $2, 1, $3, 'pending')", f"probe-{k}", uuid4(), D("0.5"))
            seconds.append(time.perf_counter() - began)
            await trio.sleep(pause)
        await run("DROP TABLE bench_commit_probe")
    finally:
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(conn.close)()
    return {"commits": commits, "p50_ms": round(percentile(seconds, 50) * 1000, 3),
            "p99_ms": round(percentile(seconds, 99) * 1000, 3)}
