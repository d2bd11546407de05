"""``python -m storage.probe URL``: exit 0 if a PostgreSQL server answers at URL, else 1."""

import asyncio
import sys

import asyncpg


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=2)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def answers(url: str) -> bool:
    """True if a PostgreSQL server answers at ``url`` within 2 s. Call it outside any event loop."""
    try:
        asyncio.run(_probe(url))
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True


def main() -> int:
    return 0 if answers(sys.argv[1]) else 1


if __name__ == "__main__":
    sys.exit(main())
