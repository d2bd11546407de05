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


def main() -> int:
    try:
        asyncio.run(_probe(sys.argv[1]))
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
