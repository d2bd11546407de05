"""Fault injection: the manager as a separate process, killed with SIGKILL around closes.

Run with ``make chaos`` (``pytest -m chaos``); not part of ``make test``.

Rules: loopback only; the simulator runs in this test process on port 0 and keeps its
order log across the manager's deaths; the manager is ``run.py live`` against it with
a config written here; kills are SIGKILL — at fail points inside the executor
(``actors/failpoints.py``: before and after the write-ahead row, after the send,
after the result) and at random moments. ``CHAOS_ITERATIONS`` (default 50) and
``CHAOS_SEED`` (default 1) set the size and the randomness.

After every scenario the invariants are checked against the simulator's order log
and the database:

* no position gets another close order once it is flat;
* no client order id is accepted twice;
* every aged position ends closed;
* the audit trail agrees with the simulator (every fill is in the write-ahead table
  with the same client id, quantity and price; closed quantities match).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
import trio

from simulator.server import serve_simulator
from storage.repository import Database
from tests.support import DatabaseProxy

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parent.parent
KILL_POINTS = ["before_wal", "after_wal", "after_send", "after_record", "random"]


class Manager:
    """``run.py live`` as a child process."""

    def __init__(self, config: Path, database_url: str, log_dir: Path):
        self.config, self.database_url, self.log_dir = config, database_url, log_dir
        self.runs = 0

    async def start(self, failpoints: str = "") -> trio.Process:
        self.runs += 1
        env = {**os.environ, "DATABASE_URL": self.database_url, "CHAOS_KEY": "sim-key",
               "CHAOS_SECRET": "sim-secret", "APM_FAILPOINTS": failpoints}
        log_path = self.log_dir / f"manager-{self.runs:03d}.log"
        proc = await trio.lowlevel.open_process(
            [sys.executable, "run.py", "live", "--config", str(self.config)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
        proc.log_path = log_path
        return proc


def write_config(path: Path, info: dict, retry=(0.2, 0.5, 1.0)) -> Path:
    path.write_text(f"""
[manager]
poll_interval_seconds = 0.5
stale_after_seconds = 1
rest_poll_seconds = 0.5
error_cooldown_seconds = 1
retry_delays_seconds = {list(retry)}
[[exchanges]]
name = "bybit"
rest_url = "{info['bybit']['rest']}"
ws_url = "{info['bybit']['ws']}"
private_ws_url = "{info['bybit']['private_ws']}"
api_key_env = "CHAOS_KEY"
api_secret_env = "CHAOS_SECRET"
[[exchanges]]
name = "binanceusdm"
rest_url = "{info['binanceusdm']['rest']}"
ws_url = "{info['binanceusdm']['ws']}"
private_ws_url = "{info['binanceusdm']['private_ws']}"
api_key_env = "CHAOS_KEY"
api_secret_env = "CHAOS_SECRET"
[metrics]
port = 0
""")
    return path


async def open_positions(state, db: Database, tag: str) -> list[tuple[str, str, D]]:
    """Two positions in grace whose price is past breakeven: both close at once.

    Binance does not report when a position was opened; as in production, the
    trading bot's row in the position book says so.
    """
    opened = datetime.now(timezone.utc) - timedelta(hours=5)
    made = []
    for exchange, side, bid, ask in (("bybit", "long", "101", "101.01"), ("binanceusdm", "short", "98.99", "99")):
        symbol = f"{tag}{exchange[:2].upper()}USDT"
        qty = D("3")
        if exchange == "binanceusdm":
            await db.upsert_open_position(exchange=exchange, symbol=f"{symbol[:-4]}/USDT:USDT", side=side,
                                          quantity=qty, entry_price=D(100), opened_at=opened, source="bot")
        state.set_position(exchange, symbol, side, str(qty), "100", opened_at=opened)
        state.set_price(exchange, symbol, bid=D(bid), ask=D(ask), last=D(bid))
        made.append((exchange, symbol, qty))
    return made


async def wait_closed(db: Database, state, positions, timeout=90) -> None:
    with trio.fail_after(timeout):
        while True:
            open_on_exchange = [p for p in positions if (p[0], p[1]) in state.positions]
            rows = await db.fetch("SELECT count(*) AS n FROM monitoring.aged_positions WHERE status <> 'closed'")
            if not open_on_exchange and rows[0]["n"] == 0:
                return
            await trio.sleep(0.2)


async def stop(proc: trio.Process) -> int:
    """SIGTERM once the manager is up: a clean stop, exit code 0.

    (A SIGTERM in the first milliseconds, before the interpreter runs any of our code,
    ends the process the default way, -15: nothing to clean up then.)
    """
    with trio.fail_after(30):
        while b"supervisor=root event=started" not in proc.log_path.read_bytes():
            await trio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        return await proc.wait()


async def check_invariants(db: Database, state, positions) -> None:
    orders = [o.record() for o in state.orders]
    accepted = [o for o in orders if o["status"] != "rejected"]
    ids = [o["client_order_id"] for o in accepted]
    assert len(ids) == len(set(ids)), "a client order id was accepted twice"
    by_symbol = defaultdict(list)
    for o in orders:
        by_symbol[(o["exchange"], o["symbol"])].append(o)
    for exchange, symbol, qty in positions:
        filled = D(0)
        for o in by_symbol[(exchange, symbol)]:
            assert filled < qty, f"{exchange} {symbol}: an order arrived after the position was flat: {o}"
            assert o["reduce_only"], o
            filled += D(o["filled_qty"] or 0)
        assert filled == qty, f"{exchange} {symbol}: filled {filled} of {qty}"
    rows = await db.fetch("SELECT * FROM monitoring.aged_positions")
    assert rows and all(r["status"] == "closed" for r in rows), [(r["symbol"], r["status"]) for r in rows]
    wal = {w["client_order_id"]: w for w in await db.fetch("SELECT * FROM monitoring.close_orders")}
    for o in accepted:
        if D(o["filled_qty"] or 0) > 0:
            w = wal.get(o["client_order_id"])
            assert w is not None, f"fill {o['client_order_id']} missing from the write-ahead table"
            assert w["filled_qty"] == D(o["filled_qty"]) and w["avg_price"] == D(o["avg_price"]), (w, o)
            assert w["state"] in ("filled", "partially_filled"), w
    closed_qty = {(r["exchange"], r["symbol"]): r for r in rows}
    for exchange, symbol, qty in positions:
        unified = f"{symbol[:-4]}/USDT:USDT"
        r = closed_qty[(exchange, unified)]
        assert r["closed_qty"] == qty and r["close_reason"] != "manual", dict(r)


@pytest.fixture
async def chaos_env(aio_loop, db, database_url, tmp_path):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(lambda task_status: serve_simulator(tick_interval=None, task_status=task_status))
        yield nursery, sim, db, database_url, tmp_path
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(1800)
async def test_kill_minus_nine_around_closes(chaos_env):
    nursery, sim, db, database_url, tmp_path = chaos_env
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "1")))
    iterations = int(os.environ.get("CHAOS_ITERATIONS", "50"))
    manager = Manager(write_config(tmp_path / "chaos.toml", sim.info()), database_url, tmp_path)
    positions = []
    kills = defaultdict(int)
    for i in range(iterations):
        point = KILL_POINTS[i % len(KILL_POINTS)]
        made = await open_positions(sim.state, db, f"K{i}X")
        positions += made
        if point == "random":
            proc = await manager.start()
            await trio.sleep(rng.uniform(0.3, 3.0))
            proc.kill()
        else:
            proc = await manager.start(f"{point}@{rng.choice([1, 1, 2])}")
        with trio.fail_after(60):
            code = await proc.wait()
        if code == -signal.SIGKILL:
            kills[point] += 1
        proc = await manager.start()
        await wait_closed(db, sim.state, made)
        assert await stop(proc) == 0
    await check_invariants(db, sim.state, positions)
    assert sum(kills.values()) >= iterations * 0.9, kills  # nearly every run really died by SIGKILL
    for point in KILL_POINTS:
        assert kills[point] > 0, f"no kill at {point}: {dict(kills)}"


@pytest.mark.parametrize("fault", [
    {"reject_next": {"count": 2, "code": "10006", "exchange": "bybit"}},
    {"reject_next": {"count": 1, "exchange": "binanceusdm", "code": "-1001"}},
    {"http_5xx": 3},
    {"rate_limit_429": 3},
    {"drop_reply": 2},
])
async def test_each_simulator_fault(chaos_env, fault):
    nursery, sim, db, database_url, tmp_path = chaos_env
    manager = Manager(write_config(tmp_path / "chaos.toml", sim.info()), database_url, tmp_path)
    from simulator.admin import apply_faults  # noqa: PLC0415
    apply_faults(sim.state, sim.hub, fault)
    made = await open_positions(sim.state, db, "F")
    proc = await manager.start()
    await wait_closed(db, sim.state, made)
    assert await stop(proc) == 0
    await check_invariants(db, sim.state, made)


async def test_partial_fills_leave_the_remainder_until_flat(chaos_env):
    nursery, sim, db, database_url, tmp_path = chaos_env
    manager = Manager(write_config(tmp_path / "chaos.toml", sim.info()), database_url, tmp_path)
    from simulator.admin import apply_faults  # noqa: PLC0415
    apply_faults(sim.state, sim.hub, {"partial_fill_ratio": "0.5"})
    made = await open_positions(sim.state, db, "P")
    proc = await manager.start()
    with trio.fail_after(60):  # every order fills half: the positions shrink but stay open
        while not all(sum(D(o.record()["filled_qty"] or 0) for o in sim.state.orders if o.record()["symbol"] == s)
                      >= q / 2 for _, s, q in made):
            await trio.sleep(0.2)
    rows = await db.fetch("SELECT status FROM monitoring.aged_positions")
    assert all(r["status"] != "closed" for r in rows)  # not closed while the exchange shows a remainder
    sim.state.faults.partial_fill_ratio = None  # the book deepens: the remainder fills
    await wait_closed(db, sim.state, made)
    assert await stop(proc) == 0
    await check_invariants(db, sim.state, made)
    assert all(len([o for o in sim.state.orders if o.record()["symbol"] == s]) >= 2 for _, s, _ in made)


async def test_position_closed_externally_is_recorded_as_manual(chaos_env):
    nursery, sim, db, database_url, tmp_path = chaos_env
    manager = Manager(write_config(tmp_path / "chaos.toml", sim.info()), database_url, tmp_path)
    opened = datetime.now(timezone.utc) - timedelta(hours=5)
    sim.state.set_position("bybit", "EXTUSDT", "long", "2", "100", opened_at=opened)
    sim.state.set_price("bybit", "EXTUSDT", bid=D("95"), ask=D("95.1"), last=D("95"))  # under water: no close
    proc = await manager.start()
    with trio.fail_after(60):
        while not await db.fetch("SELECT 1 FROM monitoring.aged_positions"):
            await trio.sleep(0.2)
    from simulator.admin import apply_faults  # noqa: PLC0415
    apply_faults(sim.state, sim.hub, {"close_position": {"exchange": "bybit", "symbol": "EXTUSDT"}})
    with trio.fail_after(60):
        while (await db.fetch("SELECT status FROM monitoring.aged_positions"))[0]["status"] != "closed":
            await trio.sleep(0.2)
    assert await stop(proc) == 0
    [row] = await db.fetch("SELECT * FROM monitoring.aged_positions")
    assert row["close_reason"] == "manual" and sim.state.orders == []


async def test_websocket_silenced_then_rest_fallback_still_closes(chaos_env):
    nursery, sim, db, database_url, tmp_path = chaos_env
    manager = Manager(write_config(tmp_path / "chaos.toml", sim.info()), database_url, tmp_path)
    opened = datetime.now(timezone.utc) - timedelta(hours=5)
    sim.state.set_position("bybit", "WSSUSDT", "long", "2", "100", opened_at=opened)
    sim.state.set_price("bybit", "WSSUSDT", bid=D("95"), ask=D("95.1"), last=D("95"))
    proc = await manager.start()
    with trio.fail_after(60):
        while not await db.fetch("SELECT 1 FROM monitoring.aged_positions"):
            await trio.sleep(0.2)
    sim.hub.silence("bybit")
    await trio.sleep(1)
    sim.state.set_price("bybit", "WSSUSDT", bid=D("101"), ask=D("101.1"), last=D("101"))  # only REST sees it
    await wait_closed(db, sim.state, [("bybit", "WSSUSDT", D(2))], timeout=60)
    sim.hub.resume() if hasattr(sim.hub, "resume") else sim.hub.silence("bybit", on=False)
    assert await stop(proc) == 0
    await check_invariants(db, sim.state, [("bybit", "WSSUSDT", D(2))])


async def test_database_connection_lost_mid_run(chaos_env):
    nursery, sim, db, database_url, tmp_path = chaos_env
    proxy = await nursery.start(DatabaseProxy(database_url).run)
    manager = Manager(write_config(tmp_path / "chaos.toml", sim.info()), proxy.url, tmp_path)
    made = []
    proc = await manager.start()
    with trio.fail_after(120):  # wait until the manager is up: connected, migrated, every child running
        while "supervisor=root event=started" not in proc.log_path.read_text(errors="replace"):
            await trio.sleep(0.2)
    for i in range(3):
        made += await open_positions(sim.state, db, f"D{i}X")
        await trio.sleep(0.5)
        await proxy.cut()  # the database goes away while closes are happening
        await trio.sleep(2)
        proxy.restore()
    await wait_closed(db, sim.state, made, timeout=90)
    assert await stop(proc) == 0
    await check_invariants(db, sim.state, made)
