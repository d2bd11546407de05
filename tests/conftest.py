"""Shared fixtures.

Test rules for the whole suite: loopback only, port 0 for every server, real
PostgreSQL — ``TEST_DATABASE_URL`` (the Makefile sets it when a server answers at
127.0.0.1:5432) or else an embedded server started for the run. Each run creates its
own database and drops it afterwards, so runs never collide. Actor logic runs on
trio's autojump MockClock; anything with a real socket uses the real clock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
import trio
import trio.testing

from storage import with_database
from storage.embedded import EmbeddedPostgres, fallback_dir
from storage.migrate import apply_migrations
from storage.repository import Database
from service.asyncio_bridge import open_asyncio_loop

MONITORING_TABLES = (
    "monitoring.close_orders, monitoring.aged_positions_monitoring, monitoring.aged_positions_history, "
    "monitoring.aged_positions, monitoring.episodes"
)


def _run_asyncio(coro):
    loop = asyncio.new_event_loop()  # trio_asyncio replaces the policy; use a private loop
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


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

    _run_asyncio(setup())
    yield with_database(server_url, name)
    _run_asyncio(teardown())


@pytest.fixture
async def aio_loop():
    """An asyncio loop on top of trio, for asyncpg and ccxt (one per test)."""
    async with open_asyncio_loop() as loop:
        yield loop


@asynccontextmanager
async def _empty_database(url: str, **connect_options):
    database = await Database.connect(url, max_size=4, **connect_options)
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


@pytest.fixture
def mock_clock():
    """trio's MockClock for runtime tests that also talk to PostgreSQL.

    Virtual time jumps only after every task has been idle for 5 real milliseconds, so a
    database round trip in flight is never mistaken for idleness.
    """
    return trio.testing.MockClock(autojump_threshold=0.005)


@pytest.fixture
async def mdb(aio_loop, database_url):
    """The test database on empty tables, with no asyncpg timeouts (which would fire
    when the mock clock jumps ahead)."""
    async with _empty_database(database_url, command_timeout=None, connect_timeout=None) as database:
        yield database
