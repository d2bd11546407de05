"""The process whose start :mod:`bench.recovery` times (see there). Prints one JSON line."""

import os
import time

T0 = float(os.environ["BENCH_T0"])
T_INTERP = time.time()

import json  # noqa: E402
from datetime import datetime  # noqa: E402

import trio  # noqa: E402

import service.app  # noqa: E402,F401 - the real service's import graph (ccxt, feeds, storage, ...)
from actors.clock import PolicyClock  # noqa: E402
from feeds.feed import Feed  # noqa: E402
from service.config import DEFAULTS  # noqa: E402
from storage import open_database  # noqa: E402

from bench.common import EXCHANGE, QUIET_FEED, configure_logging, memory_exchange  # noqa: E402
from service.asyncio_bridge import open_asyncio_loop  # noqa: E402

T_IMPORTED = time.time()


async def main() -> dict:
    n = int(os.environ["BENCH_N"])
    marks = {}
    async with open_asyncio_loop():
        async with open_database(os.environ["BENCH_DB_URL"]) as db:
            marks["db_open_s"] = time.time() - T0
            calls = {"n": 0}
            inner = db._call

            async def counting(fn, *args):  # how many database round trips the start-up makes
                calls["n"] += 1
                return await inner(fn, *args)
            db._call = counting
            ex = memory_exchange(n, datetime.fromisoformat(os.environ["BENCH_NOW"]))
            feed = Feed(EXCHANGE, os.environ["BENCH_WS_URL"], rest_quote=ex.fetch_quote, timings=QUIET_FEED)
            svc, _obs = service.app.build_service(db, {EXCHANGE: ex}, {EXCHANGE: feed}, DEFAULTS,
                                                  PolicyClock(), http_port=None)  # as run_live builds it
            async with trio.open_nursery() as nursery:
                nursery.start_soon(svc.run)
                running_at = None
                positions = svc.positions  # its _children dict is peeked at (O(1), not a snapshot)
                with trio.move_on_after(120) as waiting:
                    while True:
                        if running_at is None and len(positions._children) >= n:
                            running_at = time.time() - T0
                        if running_at is not None and svc.registry.watching() >= n:
                            break
                        await trio.sleep(0.005)
                if waiting.cancelled_caught:
                    raise RuntimeError(f"not all watching after 120 s: {len(positions._children)} children, "
                                       f"{svc.registry.watching()} inboxes, states "
                                       f"{sorted(set(c.state for c in svc.positions.children().values()))}")
                marks["watching_s"] = time.time() - T0
                marks["supervisor_running_s"] = running_at
                marks["all_children_running"] = sum(1 for c in svc.positions.children().values()
                                                    if c.state == "running") == n
                marks["db_calls_until_watching"] = calls["n"]
                marks["subscribed_symbols"] = len(feed.symbols)
                marks["detector_first_poll_done"] = svc.detector.polls >= 1
                svc.shutdown()
                nursery.cancel_scope.cancel()
    return marks


if __name__ == "__main__":
    configure_logging()
    result = trio.run(main)
    result.update(interpreter_up_s=round(T_INTERP - T0, 3), imports_done_s=round(T_IMPORTED - T0, 3))
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))
