"""Shared fixtures.

Test rules for the whole suite: loopback only, port 0 for every server, real
PostgreSQL — ``TEST_DATABASE_URL`` (the Makefile sets it when a server answers at
127.0.0.1:5432) or else an embedded server started for the run. Each run creates its
own database and drops it afterwards, so runs never collide. Actor logic runs on
trio's autojump MockClock; anything with a real socket uses the real clock.

Nothing in this suite may depend on the machine being idle. Tests wait for
conditions (an event, a row, a counter, a log line), never for a wall-clock budget;
each wait has a generous ceiling (:func:`tests.support.within`) that only bounds a
hang and says what did not happen. Speed is measured in ``bench/``, not asserted here.

The mock clock and the real database
------------------------------------
Runtime tests run the Service on trio's MockClock (virtual time: a 40-hour lifecycle
takes a second) against a real PostgreSQL. Autojump advances virtual time to the next
timer as soon as every task is blocked. A task blocked on a database reply is blocked
on real I/O, which trio cannot tell from idleness. The old remedy, a small real-time
threshold (jump only after every task has been idle for 5 real ms), is a wall-clock
budget: on a busy machine a round trip takes longer than 5 ms, virtual time jumps while
a query is in flight, and timers fire "early" relative to the database (a write-ahead
row's ``fail_after`` expires, a sample lands an interval late, a phase changes before
its row is read).

So here virtual time cannot move while any database call is in flight (the
``mock_clock`` + ``mdb`` fixtures): ``mdb`` is a :class:`Database` whose every call
(``_call``, which every query and write goes through, plus connect and close) holds
the clock — the first call in flight sets ``autojump_threshold`` to infinity, the last
one to finish sets it back to 0. With nothing in flight the clock jumps as soon as
every task is blocked (threshold 0, like pytest-trio's ``autojump_clock``); with a
query in flight trio just waits for the socket, however long that takes. Virtual time
is therefore a function of the program alone, never of how fast the machine is.

Other designs considered: a larger threshold only moves the budget (and slows every
jump by that much); ``autojump_threshold=inf`` with the test advancing the clock by
hand would make each test re-implement the scheduling of the detector, actors, writer
and timers. Holding the clock for exactly as long as the database is busy keeps the
tests as they read while removing the race.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

from storage import with_database
from storage.embedded import EmbeddedPostgres, fallback_dir
from storage.migrate import apply_migrations
from storage.repository import Database
from service.asyncio_bridge import open_asyncio_loop
from tests.support import run_asyncio

# Hypothesis by default fails an example slower than 200 ms (``deadline``) and a test
# whose data generation is slow (``HealthCheck.too_slow``): both are wall-clock budgets
# that a loaded machine misses. Properties are checked here; speed is not.
settings.register_profile("apm", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("apm")

MONITORING_TABLES = (
    "monitoring.close_orders, monitoring.aged_positions_monitoring, monitoring.aged_positions_history, "
    "monitoring.operator_actions, monitoring.symbol_overrides, monitoring.aged_positions, monitoring.episodes"
)


def _project_tmp_dir() -> Path:
    # Under the project, not /tmp/pytest-of-*: when tests run as root the embedded
    # server runs as 'postgres', which cannot enter pytest's private temp folders.
    # (When the project itself is in a private folder, the server keeps its data in
    # storage.embedded.fallback_dir instead; _remove_tmp_dir removes that too.)
    base = Path(__file__).resolve().parent.parent / ".data" / "test-tmp"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    path.chmod(0o755)
    return path


def _remove_tmp_dir(path: Path) -> None:
    """Remove ``path`` and the temp folders of any embedded server whose data dir was in it."""
    for directory in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        shutil.rmtree(fallback_dir(directory), ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded_dir():
    """An empty directory for an embedded PostgreSQL, removed afterwards."""
    path = _project_tmp_dir()
    yield path
    _remove_tmp_dir(path)


@pytest.fixture(scope="session")
def server_url():
    """URL of a PostgreSQL server for this run (its maintenance database)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    path = _project_tmp_dir()
    server = EmbeddedPostgres(path)
    try:
        yield server.start()
    finally:
        server.stop()
        _remove_tmp_dir(path)


@pytest.fixture(scope="session")
def database_url(server_url):
    """A fresh, migrated database for this test run, dropped at the end."""
    name = f"apm_test_{uuid.uuid4().hex[:12]}"

    async def setup():
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(with_database(server_url, name))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    async def teardown():
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_asyncio(setup())
    yield with_database(server_url, name)
    run_asyncio(teardown())


@pytest.fixture
async def aio_loop():
    """An asyncio loop on top of trio, for asyncpg and ccxt (one per test)."""
    async with open_asyncio_loop() as loop:
        yield loop


@asynccontextmanager
async def _empty_database(url: str, database_class=Database, **connect_options):
    database = await database_class.connect(url, max_size=4, **connect_options)
    await database.execute(f"TRUNCATE {MONITORING_TABLES} RESTART IDENTITY CASCADE")
    try:
        yield database
    finally:
        with trio.CancelScope(shield=True):
            await database.close()


@pytest.fixture
async def db(aio_loop, database_url):
    """A connected :class:`Database` on empty tables."""
    async with _empty_database(database_url) as database:
        yield database


class ClockHold:
    """Holds a MockClock still while database calls are in flight (see the module docstring)."""

    def __init__(self, clock: trio.testing.MockClock):
        self.clock = clock
        self.in_flight = 0
        clock.autojump_threshold = 0

    @contextmanager
    def held(self):
        self.in_flight += 1
        self.clock.autojump_threshold = math.inf
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.clock.autojump_threshold = 0


class ClockHoldingDatabase(Database):
    """A :class:`Database` during whose every call virtual time stands still."""

    hold: ClockHold  # set by the mdb fixture before the first call

    @classmethod
    async def connect(cls, url: str, **options) -> "ClockHoldingDatabase":
        with cls.hold.held():
            return await super().connect(url, **options)

    async def close(self) -> None:
        with self.hold.held():
            await super().close()

    async def _call(self, fn, *args):
        with self.hold.held():
            return await super()._call(fn, *args)


@pytest.fixture
def mock_clock():
    """trio's MockClock for runtime tests that also talk to PostgreSQL (use with ``mdb``).

    Autojump with threshold 0 while no database call is in flight; ``mdb`` holds it
    still (threshold infinity) while one is. See the module docstring.
    """
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def mdb(aio_loop, database_url, mock_clock):
    """The test database on empty tables, for tests on ``mock_clock``: virtual time does
    not move while any of its calls is in flight, and asyncpg's own timeouts are off
    (they are asyncio timers on the virtual clock)."""
    assert trio.lowlevel.current_clock() is mock_clock, "a test using mdb must also take the mock_clock fixture"
    database_class = type("Mdb", (ClockHoldingDatabase,), {"hold": ClockHold(mock_clock)})
    async with _empty_database(database_url, database_class, command_timeout=None,
                               connect_timeout=None) as database:
        yield database
