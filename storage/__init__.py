"""PostgreSQL persistence: migrations, the repository, and the embedded server."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import trio

from storage.embedded import ADVICE, EmbeddedPostgres, EmbeddedPostgresError
from storage.repository import Database

log = logging.getLogger("storage")

PROJECT_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Database", "EmbeddedPostgres", "EmbeddedPostgresError", "ADVICE", "open_database", "default_data_dir"]


def default_data_dir() -> Path:
    """``$APM_DATA_DIR``, else ``.data/`` in the project directory."""
    return Path(os.environ.get("APM_DATA_DIR") or PROJECT_ROOT / ".data")


@asynccontextmanager
async def open_database(url: str | None = None, *, data_dir: Path | None = None,
                        migrate: bool = True, max_size: int = 8) -> AsyncIterator[Database]:
    """Connect to ``url``, else ``$DATABASE_URL``, else an embedded server in ``data_dir``.

    Must be entered inside ``trio_asyncio.open_loop()``. Applies migrations unless
    ``migrate=False``. An embedded server started here is stopped on exit.
    """
    url = url or os.environ.get("DATABASE_URL") or None
    embedded = None
    if url is None:
        embedded = EmbeddedPostgres(data_dir or default_data_dir() / "postgres")
        url = await trio.to_thread.run_sync(embedded.start)
    try:
        db = await Database.connect(url, max_size=max_size)
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
