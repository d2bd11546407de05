"""Numbered SQL migrations, applied on start.

Files in ``storage/migrations`` named ``NNN_name.sql`` are applied in number order,
each in its own transaction, and recorded in ``monitoring.schema_migrations`` with a
checksum. Applying twice is a no-op. A migration that was applied and has since been
edited is an error (fix forward with a new file instead). Concurrent starts are
serialised with an advisory lock.

These are asyncio coroutines over an asyncpg connection; :mod:`storage.repository`
exposes them to trio.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x61676564  # "aged"
# Migrations whose text was replaced after release, with the checksums of the texts
# they replace. A database that applied an earlier text is brought forward by a later
# migration (001's earlier text named the book monitoring.positions; 002 renames it).
_SUPERSEDED = {1: frozenset({"68d55d73b0d702668eb3aca8d01d79ac439fb48dad9a970f2cb1989cdc00d67e"})}


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers: {versions}")
    return found


async def apply_migrations(conn) -> list[int]:
    """Apply what is missing; return the versions applied now (empty if none)."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS monitoring;
            CREATE TABLE IF NOT EXISTS monitoring.schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM monitoring.schema_migrations")
        }
        for mig in available_migrations():
            if mig.version in done:
                if done[mig.version] != mig.checksum and done[mig.version] not in _SUPERSEDED.get(mig.version, ()):
                    raise MigrationError(
                        f"migration {mig.version:03d}_{mig.name} was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO monitoring.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            applied_now.append(mig.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
