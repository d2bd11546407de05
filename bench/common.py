"""Shared pieces of the benchmark harness: the bench database, seeding, the service under
test, an in-process tick source, the blaster subprocess, statistics and logging.

Everything runs on the real clock. Each bench function takes the URL of a migrated
database of its own (``apm_bench_<random>``, created and dropped by :mod:`bench.__main__`
or the smoke test) and empties the monitoring tables before it starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg
import trio

from actors.policy import PolicyConfig, assess, breakeven_price
from actors.position import PHASE_STATUS, Settings
from feeds.feed import FeedTimings
from storage import with_database
from storage.migrate import apply_migrations
from storage.probe import answers
from supervisor.observer import Observer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
MONITORING_TABLES = (
    "monitoring.close_orders, monitoring.aged_positions_monitoring, monitoring.aged_positions_history, "
    "monitoring.aged_positions, monitoring.episodes, monitoring.leases, monitoring.instances"
)
EXCHANGE = "bybit"
ENTRY = Decimal(100)
# A bench's feed never goes stale: its stream is the thing measured, never the REST fallback.
QUIET_FEED = FeedTimings(stale_after=3600.0)


# --- statistics -------------------------------------------------------------------------

def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        raise ValueError("no samples")
    k = max(0, min(len(data) - 1, int(round(q / 100 * len(data) + 0.5)) - 1))
    return data[k]


def median(values) -> float:
    return statistics.median(values)


# --- logging ------------------------------------------------------------------------------

def configure_logging() -> None:
    """Production's log set-up (INFO, the same format) written to /dev/null.

    The service logs at INFO in production (service.logs.configure_logging), so the
    cost of formatting those lines belongs in the numbers; the lines themselves don't
    belong on the bench's screen.
    """
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("hypercorn.access", "hypercorn.error", "asyncio", "trio-websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- the bench database ---------------------------------------------------------------------

def _run_asyncio(coro):
    loop = asyncio.new_event_loop()  # trio_asyncio may have replaced the policy: use a private loop
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class BenchDatabase:
    """A server (``DATABASE_URL``, else 127.0.0.1:5432, else embedded) and a database of our own on it."""

    def __init__(self) -> None:
        self.server_url: str | None = None
        self.url: str | None = None
        self.name = f"apm_bench_{uuid.uuid4().hex[:12]}"
        self._embedded = None
        self.where = ""

    def __enter__(self) -> "BenchDatabase":
        url = os.environ.get("DATABASE_URL")
        if url:
            self.where = "DATABASE_URL"
        elif answers(LOCAL_PG):
            url, self.where = LOCAL_PG, "127.0.0.1:5432"
        else:
            from storage import default_data_dir  # noqa: PLC0415
            from storage.embedded import EmbeddedPostgres  # noqa: PLC0415
            self._embedded = EmbeddedPostgres(default_data_dir() / "postgres")
            url, self.where = self._embedded.start(), "embedded"
        self.server_url = url

        async def create():
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await conn.close()
            conn = await asyncpg.connect(with_database(url, self.name))
            try:
                await apply_migrations(conn)
            finally:
                await conn.close()
        try:
            _run_asyncio(create())
        except BaseException:
            self._stop_embedded()
            raise
        self.url = with_database(url, self.name)
        return self

    def __exit__(self, *exc) -> None:
        async def drop():
            conn = await asyncpg.connect(self.server_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()
        try:
            _run_asyncio(drop())
        finally:
            self._stop_embedded()

    def _stop_embedded(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None


async def connect(url: str, *, max_size: int = 8):
    """A :class:`storage.Database` on ``url`` with emptied monitoring tables (inside trio_asyncio)."""
    from storage.repository import Database  # noqa: PLC0415
    db = await Database.connect(url, max_size=max_size)
    await db.execute(f"TRUNCATE {MONITORING_TABLES} RESTART IDENTITY CASCADE")
    return db


# --- the book under test ----------------------------------------------------------------

def symbol(i: int) -> str:
    """Unified symbol of bench position ``i``: ``B0000/USDT:USDT`` (exchange id ``B0000USDT``)."""
    return f"B{i:04d}/USDT:USDT"


def symbol_id(i: int) -> str:
    return f"B{i:04d}USDT"


def opened_at_for(i: int, now: datetime) -> datetime:
    """Half the book in grace (7 h old), half progressive (16 h old: 2.5 % loss allowed)."""
    return now - (timedelta(hours=7) if i % 2 == 0 else timedelta(hours=16))


@dataclass
class Book:
    count: int
    now: datetime
    aged_ids: list  # by position index
    position_ids: list

    def opened_at(self, i: int) -> datetime:
        return opened_at_for(i, self.now)


async def seed_aged(db, count: int, now: datetime | None = None, config: PolicyConfig | None = None,
                    start: int = 0) -> Book:
    """``count`` open long positions (entry 100, qty 1) and their active aged rows, in bulk."""
    config = config or PolicyConfig()
    now = now or datetime.now(timezone.utc)
    idx = list(range(start, start + count))
    syms = [symbol(i) for i in idx]
    opened = [opened_at_for(i, now) for i in idx]
    rows = await db.fetch(
        """INSERT INTO monitoring.episodes (exchange, symbol, side, quantity, entry_price, opened_at, opened_at_source, first_seen_at, last_seen_at)
           SELECT $1, s, 'long', 1, 100, o, 'bot', o, o FROM unnest($2::text[], $3::timestamptz[]) AS t(s, o)
           RETURNING id, symbol""", EXCHANGE, syms, opened)
    pid = {r["symbol"]: r["id"] for r in rows}
    statuses, targets, tolerances, hours = [], [], [], []
    for o in opened:
        a = assess("long", ENTRY, o, now, config)
        statuses.append(PHASE_STATUS[a.phase])
        targets.append(a.target_price)
        tolerances.append(a.loss_tolerance_percent)
        hours.append(a.age_hours)
    be = breakeven_price("long", ENTRY, config)
    aged = await db.fetch(
        """INSERT INTO monitoring.aged_positions
           (position_id, symbol, exchange, side, entry_price, quantity, position_opened_at, detected_at, status,
            target_price, breakeven_price, current_loss_tolerance_percent, hours_aged, grace_started_at,
            progressive_started_at)
           SELECT p, s, $1, 'long', 100, 1, o, $2, st, tp, $3, tol, h,
                  CASE WHEN st IN ('grace_active', 'progressive_active') THEN $2::timestamptz END,
                  CASE WHEN st = 'progressive_active' THEN $2::timestamptz END
           FROM unnest($4::bigint[], $5::text[], $6::timestamptz[], $7::text[], $8::numeric[], $9::numeric[],
                       $10::numeric[]) AS t(p, s, o, st, tp, tol, h)
           RETURNING id, symbol""",
        EXCHANGE, now, be, [pid[s] for s in syms], syms, opened, statuses, targets, tolerances, hours)
    aid = {r["symbol"]: r["id"] for r in aged}
    return Book(count, now, [aid[s] for s in syms], [pid[s] for s in syms])


def memory_exchange(count: int, now: datetime, start: int = 0):
    """The exchange side of :func:`seed_aged`: the same positions, a book that fills a close at 100.5."""
    from doubles.exchange import MemoryExchange  # noqa: PLC0415
    ex = MemoryExchange(name=EXCHANGE)
    for i in range(start, start + count):
        ex.set_position(symbol(i), "long", "1", "100", opened_at=opened_at_for(i, now))
        ex.set_quote(symbol(i), "100.5", "100.6", "100.5")
    return ex


def make_service(db, exchange, feed, *, poll_interval: float = 3600.0, settings: Settings | None = None,
                 config: PolicyConfig | None = None, observed: bool = True):
    """The service under test, on the real clock, around ``db``, one exchange and one feed.

    Its configuration is the program's defaults with the detector's ``poll_interval``
    and, when given, the position ``settings`` and policy ``config`` overridden.

    ``observed`` (the default): wired as production wires it (:func:`service.app.build_service`:
    the :class:`service.runtime.Service` plus its metrics hooks, metrics refresher and
    alert router; no HTTP endpoint). Otherwise the bare :class:`service.runtime.Service`.
    """
    from actors.clock import PolicyClock  # noqa: PLC0415
    from service.config import DEFAULTS  # noqa: PLC0415
    from service.runtime import Service  # noqa: PLC0415
    cfg = replace(DEFAULTS, policy=config or DEFAULTS.policy, positions=settings or DEFAULTS.positions,
                  detector=replace(DEFAULTS.detector, poll_interval=poll_interval))
    exchanges = {EXCHANGE: exchange} if exchange is not None else {}
    if observed:
        from service.app import build_service, tune_gc  # noqa: PLC0415
        svc, _obs = build_service(db, exchanges, {EXCHANGE: feed}, cfg, PolicyClock(), http_port=None)
        tune_gc()  # as run_service does before the service runs
        return svc
    return Service(db, exchanges, {EXCHANGE: feed}, cfg, PolicyClock())


class _Watch(Observer):
    def __init__(self, **calls):
        for name, fn in calls.items():
            if not callable(getattr(Observer, name, None)):
                raise TypeError(f"Observer has no {name}")
            setattr(self, name, fn)  # shadows the no-op method


def watch(svc, **calls) -> Observer:
    """Have ``svc`` tell the given functions, e.g. ``watch(svc, state_changed=fn)``.

    The names are :class:`supervisor.observer.Observer`'s; every other watcher (metrics)
    is still told. ``svc.observers.remove(returned)`` stops it.
    """
    watcher = _Watch(**calls)
    svc.observers.add(watcher)
    return watcher


def running_children(svc) -> int:
    return sum(1 for c in svc.positions.children().values() if c.state == "running")


async def wait_until(predicate, *, timeout: float, interval: float = 0.01, what: str = "condition") -> float:
    """Poll ``predicate()`` until true; return the seconds it took. TooSlowError after ``timeout``."""
    began = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)
    return trio.current_time() - began


# --- the blaster subprocess ---------------------------------------------------------------

class Blaster:
    """``python -m bench.blaster`` in its own process (its own core and GIL), driven over stdin."""

    def __init__(self, mode: str = "feed", *extra: str):
        self.mode = mode
        self.extra = extra
        self.proc = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v5/public/linear"

    async def __aenter__(self) -> "Blaster":
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.blaster", "--mode", self.mode, *self.extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(PROJECT_ROOT))
        buf = b""
        with trio.fail_after(20):
            while b"\n" not in buf:
                chunk = await self.proc.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("the blaster exited before reporting its port")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"unexpected blaster output {line!r}")
        self.port = int(line.split()[1])
        return self

    async def command(self, line: str) -> None:
        await self.proc.stdin.send_all((line + "\n").encode())

    async def __aexit__(self, *exc) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.command("QUIT")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            with trio.move_on_after(3):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


# --- price encoding of the send time ---------------------------------------------------

# The blaster puts each frame's *scheduled* send time (CLOCK_MONOTONIC, microseconds,
# modulo 1e12) in the bid: "50.<12 digits>". The clock is shared by every process of
# the machine, so the actor's decision time minus this is the end-to-end lag.
ENCODE_MOD = 10 ** 12


def lag_us_from_price(price: Decimal, decided_ns: int) -> int | None:
    s = str(price)
    if not s.startswith("50.") or len(s) != 15:
        return None
    sent_us = int(s[3:])
    return (decided_ns // 1000 - sent_us) % ENCODE_MOD


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- CPU accounting (to tell our load from the machine's) ---------------------------------

_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (this one by default)."""
    try:
        with open(f"/proc/{pid or 'self'}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / _TCK, total / _TCK


class CpuWindow:
    """CPU shares over a window: this process, the blaster, and everything else on the machine."""

    def __init__(self, blaster_pid: int | None = None):
        self.blaster_pid = blaster_pid

    def __enter__(self) -> "CpuWindow":
        self.t0 = time.monotonic()
        self.me0 = proc_cpu()
        self.bl0 = proc_cpu(self.blaster_pid) if self.blaster_pid else 0.0
        self.m0 = machine_cpu()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self.t0
        me = proc_cpu() - self.me0
        bl = (proc_cpu(self.blaster_pid) - self.bl0) if self.blaster_pid else 0.0
        busy = machine_cpu()[0] - self.m0[0]
        self.shares = {"this_process": round(me / wall, 2), "blaster": round(bl / wall, 2),
                       "rest_of_machine": round(max(0.0, busy - me - bl) / wall, 2),
                       "cores": os.cpu_count()}
