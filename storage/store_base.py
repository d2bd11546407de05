"""What the parts of :class:`storage.repository.Database` share: the pool and one way in.

The repository is assembled from one class per group of operations: the position book
and the trading bot's book (:mod:`storage.episode_store`), aged positions with their
events and history (:mod:`storage.aged_store`), the write-ahead log of close orders
(:mod:`storage.close_order_store`), the batch applier (:mod:`storage.batch_store`) and
leases (:mod:`storage.lease_store`).
Each group is a mixin over :class:`StoreBase`, which holds

* the connection pool and :meth:`StoreBase._call`, the single crossing from trio into
  the asyncio loop (where the driver's errors become :mod:`storage.errors`);
* the plain ``fetch``/``fetchval``/``execute`` helpers built on it;
* the methods one group calls on another, declared for the type checker only (at run
  time the group that defines a method is the only place it exists).

Mixins rather than module functions taking a connection: callers reach every operation
as a method of one ``Database`` (and tests swap one method on an instance), while each
group's SQL still reads on its own page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg
import trio_asyncio

from storage import ops as op
from storage.errors import LeaseLost, StorageError, StorageUnavailable, WriteRejected

__all__ = ["StoreBase"]


class StoreBase:
    """The common base of the repository's parts. See the module docstring."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        # The account this object reads and writes (None: every account; see
        # Database.for_account) and, for a fenced view, where its lease token comes from.
        self.account: str | None = None
        self._lease_token: Callable[[], int | None] | None = None
        self._bot_columns: frozenset[str] | None = None
        # After a confirmed close by the service, mark the trading bot's row closed
        # (status, closed_at, exit_reason = 'aged_<phase>'), as the original bot did.
        self.update_bot_book = True

    async def _call(self, fn, *args):
        """Run ``fn(conn, *args)`` (an asyncio coroutine function) on a pooled connection.

        The driver's errors leave as :mod:`storage.errors`.
        """

        async def job():
            async with self._pool.acquire() as conn:
                return await fn(conn, *args)

        try:
            return await trio_asyncio.aio_as_trio(job)()
        except StorageError:
            raise
        except Exception as exc:
            raise _storage_error(exc, self.account) from exc

    async def fetch(self, sql: str, *args) -> list[dict]:
        async def job(conn):
            return [dict(r) for r in await conn.fetch(sql, *args)]

        return await self._call(job)

    async def fetchval(self, sql: str, *args):
        async def job(conn):
            return await conn.fetchval(sql, *args)

        return await self._call(job)

    async def execute(self, sql: str, *args) -> str:
        async def job(conn):
            return await conn.execute(sql, *args)

        return await self._call(job)

    if TYPE_CHECKING:
        # the trading bot's book
        async def bot_book_columns(self) -> frozenset[str]: ...

        # close orders
        async def close_orders(self, aged_id: UUID) -> list[dict]: ...

        # batched writes
        async def write_batch(self, batch: Sequence[op.WriteOp]) -> None: ...


_UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


# Raised by monitoring.check_lease: the write's fencing token is not the account's live lease.
LEASE_REFUSED = "AP001"


def _storage_error(exc: Exception, account: str | None = None) -> Exception:
    """The :mod:`storage.errors` exception for a driver (or our own) error; others unchanged."""
    if isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) == LEASE_REFUSED:
        return LeaseLost(str(getattr(exc, "message", None) or exc), account)
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailable(f"{type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        (
            asyncpg.IntegrityConstraintViolationError,
            asyncpg.DataError,
            asyncpg.exceptions.RaiseError,
            ValueError,
            TypeError,
        ),
    ) or (
        isinstance(exc, asyncpg.PostgresError)
        and str(getattr(exc, "sqlstate", "") or "").startswith(("22", "23", "42"))
    ):
        return WriteRejected(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return StorageError(f"{type(exc).__name__}: {exc}")
    return exc
