"""PostgreSQL persistence: migrations, the repository, the storage writer, and the embedded server.

Everything the rest of the program knows about the database goes through here: typed
operations on :class:`Database` (states for actors, the detector's book, reports),
write operations (:mod:`storage.ops`) applied by the :class:`StorageWriter`, and
errors of its own (:mod:`storage.errors`). Nothing outside this package imports the
database driver or writes SQL.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import trio

from storage.embedded import ADVICE, EmbeddedPostgres, EmbeddedPostgresError
from storage.errors import LeaseLost, StorageError, StorageUnavailable, WriteRejected
from storage.lease_store import LeaseInfo, LeaseRound
from storage.repository import Database
from storage.writer import StorageWriter

log = logging.getLogger("storage")

PROJECT_ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "Database",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ADVICE",
    "LeaseInfo",
    "LeaseLost",
    "LeaseRound",
    "StorageError",
    "StorageUnavailable",
    "StorageWriter",
    "WriteRejected",
    "open_database",
    "default_data_dir",
]


def default_data_dir() -> Path:
    """``$APM_DATA_DIR``, else ``.data/`` in the project directory."""
    return Path(os.environ.get("APM_DATA_DIR") or PROJECT_ROOT / ".data")


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _ensure_database(url: str, name: str) -> None:
    admin = await Database.connect(url, min_size=1, max_size=1)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


@asynccontextmanager
async def open_database(
    url: str | None = None,
    *,
    data_dir: Path | None = None,
    migrate: bool = True,
    max_size: int = 8,
    database: str | None = None,
    fresh_schema: bool = False,
) -> AsyncIterator[Database]:
    """Connect to ``url``, else ``$DATABASE_URL``, else an embedded server in ``data_dir``.

    Must be entered inside ``service.asyncio_bridge.open_asyncio_loop()``. Applies migrations unless
    ``migrate=False``. An embedded server started here is stopped on exit.
    ``database`` switches to that database on the same server, creating it if needed;
    ``fresh_schema`` drops its ``monitoring`` schema first (the demo starts clean each
    run, in a database of its own).
    """
    url = url or os.environ.get("DATABASE_URL") or None
    embedded = None
    if url is None:
        embedded = EmbeddedPostgres(data_dir or default_data_dir() / "postgres")
        url = await trio.to_thread.run_sync(embedded.start)
    try:
        if database is not None:
            await _ensure_database(url, database)
            url = with_database(url, database)
        db = await Database.connect(url, max_size=max_size)
        if fresh_schema:
            await db.execute("DROP SCHEMA IF EXISTS monitoring CASCADE")
        try:
            if migrate:
                applied = await db.migrate()
                if applied:
                    log.info("applied migrations %s", ", ".join(f"{v:03d}" for v in applied))
            yield db
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
    finally:
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)
