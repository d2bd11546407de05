"""recovery_1000_s: process start → every active aged position watched again.

With the database up and ``positions`` active aged rows in it (and the same positions
on the exchange), a fresh interpreter is started (:mod:`bench.recovery_child`). The
clock starts in this process right before the child is spawned (``time.time()``,
handed over in the environment) and stops in the child when the positions supervisor
has ``positions`` children running *and* every one of them has loaded its row and
registered its inbox (so it is watching, not just scheduled).

The child does what a real start does: imports the service's whole module graph
(``service.app``, ccxt included), opens the database with the migration check, builds
the real :class:`service.runtime.Service` with the real :class:`feeds.feed.Feed`
(connected to :mod:`bench.blaster`) and runs the supervision tree, whose detector does
the recovery. Only the exchange is in memory (a real one would add ``load_markets`` and
``fetch_positions`` round trips over the network).
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from bench.common import PROJECT_ROOT, Blaster, connect, seed_aged
from service.asyncio_bridge import open_asyncio_loop


async def bench_recovery(url: str, *, positions: int = 1000, repeats: int = 1) -> dict:
    runs = []
    async with open_asyncio_loop():
        async with Blaster("feed") as blaster:
            for _ in range(repeats):
                db = await connect(url)
                try:
                    book = await seed_aged(db, positions)
                finally:
                    await db.close()
                env = dict(os.environ, BENCH_DB_URL=url, BENCH_N=str(positions), BENCH_WS_URL=blaster.url,
                           BENCH_NOW=book.now.isoformat())
                env["BENCH_T0"] = repr(time.time())
                proc = await trio.run_process([sys.executable, "-m", "bench.recovery_child"], env=env,
                                              cwd=str(PROJECT_ROOT), capture_stdout=True, capture_stderr=True,
                                              check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"recovery child failed ({proc.returncode}): "
                                       f"{proc.stderr.decode(errors='replace')[-3000:]}")
                runs.append(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["watching_s"])
    worst = max(runs, key=lambda r: r["watching_s"])
    chosen = sorted(runs, key=lambda r: r["watching_s"])[len(runs) // 2]  # the median run
    return {"recovery_1000_s": round(chosen["watching_s"], 3),
            "details": {"positions": positions, "runs": len(runs), "median_run": chosen,
                        "best_s": best["watching_s"], "worst_s": worst["watching_s"]}}
