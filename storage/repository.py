"""The repository: trio-native async functions over asyncpg.

asyncpg is an asyncio library; this program runs on trio. One asyncio loop is opened
at the top of the program (``async with service.asyncio_bridge.open_asyncio_loop():``) and every
method here crosses into it with :func:`trio_asyncio.aio_as_trio`. A crossing costs
tens of microseconds, so callers batch writes (:meth:`Database.write_batch`) rather
than crossing once per tick.

Rows come back as plain ``dict`` objects (numeric → Decimal, timestamptz → aware
datetime, jsonb → Python objects).

:class:`Database` is assembled from one mixin per group of operations, each in its own
module over the shared :class:`~storage.store_base.StoreBase` (the pool and the
crossing): episodes and the trading bot's book (:mod:`storage.episode_store`), aged
positions (:mod:`storage.aged_store`), close orders (:mod:`storage.close_order_store`),
batched writes (:mod:`storage.batch_store`), leases (:mod:`storage.lease_store`),
operator actions with per-symbol overrides (:mod:`storage.operator_store`) and the
operator console's reads (:mod:`storage.console_store`). This module adds connecting,
migrating, the statistics and account-scoped views (:meth:`Database.for_account`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import asyncpg
import trio_asyncio

from storage.aged_store import ACTIVE_STATUSES, AgedStore
from storage.batch_store import AGED_UPDATABLE, BOT_BOOK_CLOSE, CLOSE_ORDER_UPDATABLE, BatchStore
from storage.close_order_store import IN_FLIGHT_STATES, CloseOrderStore
from storage.console_store import ConsoleStore
from storage.episode_store import BOT_BOOK_REQUIRED, EpisodeStore
from storage.errors import WriteRejected
from storage.lease_store import LeaseStore
from storage.migrate import apply_migrations
from storage.operator_store import OperatorStore
from storage.statistics import statistics

__all__ = [
    "ACTIVE_STATUSES",
    "AGED_UPDATABLE",
    "BOT_BOOK_CLOSE",
    "BOT_BOOK_REQUIRED",
    "CLOSE_ORDER_UPDATABLE",
    "IN_FLIGHT_STATES",
    "Database",
]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: skip asyncpg's server-side RESET ALL round trip.

    Nothing here leaves session state behind (no SET, no LISTEN; the migration lock is
    released explicitly), so the default reset would be a wasted round trip on every
    query. asyncpg still does its client-side clean-up.
    """


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=lambda v: json.dumps(v, default=str), decoder=json.loads, schema="pg_catalog"
        )


class Database(EpisodeStore, AgedStore, CloseOrderStore, BatchStore, LeaseStore, OperatorStore, ConsoleStore):
    """A pool of connections to one PostgreSQL database.

    Create with ``await Database.connect(url)`` from inside an open trio-asyncio loop.
    This object is *unscoped* (``account`` is None): it reads every account's rows and
    writes new rows in the account named like their exchange. :meth:`for_account` gives
    a view of one account on the same pool.
    """

    def for_account(self, account: str, lease_token: Callable[[], int | None] | None = None) -> Database:
        """A view of this database for ``account`` alone, on the same pool (no new connections).

        Its reads see only ``account``'s episodes, aged positions and close orders (and
        what hangs off them); the rows it creates belong to ``account``. With
        ``lease_token`` it is *fenced*: each :meth:`write_batch` is refused with
        :exc:`~storage.errors.LeaseLost` unless ``lease_token()`` is the account's live
        lease token, checked by the database in the batch's own transaction (None means
        no lease: refused without a round trip). Closing a view leaves the pool open.
        """
        if not isinstance(account, str) or not account:
            raise WriteRejected(f"account must be a non-empty string, got {account!r}")
        if lease_token is not None and not callable(lease_token):
            raise WriteRejected(f"lease_token must be a callable returning the token, got {lease_token!r}")
        view = type(self)(self._pool)
        view.account = account
        view._lease_token = lease_token
        view.update_bot_book = self.update_bot_book
        view._bot_columns = self._bot_columns
        view._owns_pool = False
        return view

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        command_timeout: float | None = 10.0,
        connect_timeout: float | None = 10.0,
    ) -> Database:
        pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            command_timeout=command_timeout,
            timeout=connect_timeout,
            reset=_keep_session,
        )
        return cls(pool)

    _owns_pool = True

    async def close(self) -> None:
        """Close the pool (an account view leaves it to the database it came from)."""
        if self._owns_pool:
            await trio_asyncio.aio_as_trio(self._pool.close)()

    async def migrate(self) -> list[int]:
        """Apply missing migrations; return the versions applied now."""
        return await self._call(apply_migrations)

    # --- statistics ----------------------------------------------------------------------

    async def statistics(self, days: float = 7, now: datetime | None = None) -> dict:
        """Counts, success rate, averages at close, by close reason, retries, close latency
        (see :func:`storage.statistics.statistics`)."""
        return await statistics(self, days, now)
